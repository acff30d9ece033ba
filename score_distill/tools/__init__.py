"""Tools visible to model code: the Python sandbox and the search backends."""
