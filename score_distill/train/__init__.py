"""Training: SFT and short-horizon RL."""
