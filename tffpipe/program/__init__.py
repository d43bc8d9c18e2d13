"""The program: the round loop, client sampling, evaluation, checkpoints, outputs and progress."""
