"""A user's aggregation layer: bound every client update's L2 norm."""

import tensorflow_federated as tff


def norm_bound(inner, *, max_norm: float = 1.0):
    """Clips each client update to `max_norm` before the rest of the stack.

    Args:
      inner: the aggregation factory this layer wraps.
      max_norm: the largest L2 norm an update keeps.
    """
    return tff.aggregators.clipping_factory(max_norm, inner)
