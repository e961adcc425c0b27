"""The trainer: train state, pure train step, the loop."""
