"""Aggregation: one module per layer of the model-update aggregation stack, and the registry that composes them."""
