"""Training: the recipe (one explicit loop), the loss, checkpoints and run logging."""
