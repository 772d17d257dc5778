"""Training: configs, losses, the Accelerate trainer."""
