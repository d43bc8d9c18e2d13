"""Vertical federated learning: parties holding different features of the same people.

`psi.py` aligns the parties' sample IDs by private set intersection;
`masking.py` adds the parties' embeddings with pairwise-masked secure sums;
`parties.py` holds each organisation's model and data apart; `protocol.py`
runs the split-model training step; `program.py` is the run around it
(epochs, evaluation, checkpoints, outputs).
"""
