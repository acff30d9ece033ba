"""The error a training step raises when its gradient is not finite (no torch import here:
the command line catches it without loading torch)."""


class NonFiniteUpdate(RuntimeError):
    """A gradient that is NaN or infinite: stepping would write it into every weight."""
