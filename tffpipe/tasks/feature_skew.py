"""Feature skew: each client sees its inputs through its own seeded transform.

Label skew (Dirichlet, shards) and quantity skew change which examples a
client holds; feature skew changes how they look, as different cameras,
scanners or lab instruments do. Each client draws its transform once from
the seed and its position, and every one of its examples (training or
held-out) goes through it:

* `shift_scale` (tabular): every feature multiplied by exp(s z1) and shifted
  by s z2 times its standard deviation over all examples (z ~ N(0, 1) per
  client and feature);
* `brightness` (images): one offset per client, s u times the data's value
  range (u ~ U(-1, 1));
* `rotation` (images, `(n, height, width[, channels])`): one angle per client,
  s u times 180 degrees, by SciPy's `ndimage.rotate` (bilinear, the image
  size kept, uncovered corners filled with the data's minimum).

`s` is `feature_skew_strength`; 0 leaves the data unchanged.
"""

from collections.abc import Callable, Sequence

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator, float, np.ndarray], np.ndarray]


def _shift_scale(x, rng, strength, reference):
    features = x.shape[1:]
    scale = np.exp(strength * rng.standard_normal(features))
    shift = strength * rng.standard_normal(features) * reference.std(axis=0)
    return x * scale + shift


def _brightness(x, rng, strength, reference):
    return x + strength * rng.uniform(-1, 1) * (reference.max() - reference.min())


def _rotation(x, rng, strength, reference):
    from scipy import ndimage

    angle = strength * rng.uniform(-180, 180)
    return ndimage.rotate(x, angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=float(reference.min()))


SKEWS: dict[str, Transform] = {"shift_scale": _shift_scale, "brightness": _brightness, "rotation": _rotation}
CHOICES = ("none",) + tuple(SKEWS)


def check(kind: str, strength: float, x: np.ndarray) -> str | None:
    """Why `kind` cannot apply to `x`, or None."""
    if kind not in CHOICES:
        return f"feature_skew must be one of {', '.join(CHOICES)}, got {kind!r}"
    if not np.isfinite(strength) or strength < 0:
        return f"feature_skew_strength must be a finite number >= 0, got {strength}"
    if kind == "rotation" and x.ndim not in (3, 4):
        return f"feature_skew='rotation' needs images of shape (n, height, width[, channels]), got x of shape {x.shape}"
    if kind == "shift_scale" and x.ndim < 2:
        return f"feature_skew='shift_scale' needs one row of features per example, got x of shape {x.shape}"
    return None


def apply(kind: str, x: np.ndarray, client_indices: Sequence[np.ndarray], strength: float, seed: int) -> np.ndarray:
    """`x` with each client's rows passed through that client's transform.

    Args:
      kind: one of `CHOICES` (checked by `check`).
      x: all examples' features (float32).
      client_indices: each client's rows of `x`, in client order.
      strength: how far clients differ.
      seed: with the client's position, seeds its transform.
    """
    if kind == "none" or strength == 0:
        return x
    transform = SKEWS[kind]
    skewed = x.copy()
    for position, rows in enumerate(client_indices):
        rng = np.random.default_rng([seed, 7919, position])
        if len(rows):
            skewed[rows] = transform(x[rows], rng, strength, x).astype(x.dtype)
    return skewed
