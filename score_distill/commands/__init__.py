"""Sub-commands of the score-distill CLI, one module each (see cli.py)."""
