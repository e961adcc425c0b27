"""The trainer: the pure train step and the loop, on top of jaxdiff.run and jaxdiff.state."""
