"""Secure-sum protocols: how the in-process engine (and its Ray actors) sums the values TFF's secure-sum intrinsics receive.

A protocol is one module here with a `PROTOCOL` (`base.SecureProtocol`) and
its name in `registry.PROTOCOLS`: pairwise masking (`masking.py`) and CKKS
homomorphic encryption (`ckks.py`).
"""
