"""Learning: the federated algorithms (one module each), their registry and the optimizers."""
