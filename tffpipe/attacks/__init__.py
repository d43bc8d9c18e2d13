"""Simulated malicious clients: which clients attack, and how (`--attack`).

One module per attack (`label_flip.py`, `backdoor.py`, ...) with an
`ATTACK` (see `base.Attack`) and its name in `registry.ATTACKS`;
`simulation.py` applies the chosen one to the attackers' data each round.
"""
