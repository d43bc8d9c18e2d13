"""Privacy: (epsilon, delta) accounting with dp_accounting, and per-round tracking of a DP run."""
