"""Train state, steps, optimizer, metrics and the training loop."""
