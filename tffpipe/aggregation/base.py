"""What an aggregation layer is, and what it is given when the stack is built.

A layer is one module in this folder with a `LAYER` object and an entry in
`registry.LAYERS`. It knows its own settings (a frozen `Settings` dataclass,
whose fields become flags), its checks, the TFF factory it builds around the
inner one, its lines in the printed stack, and, for DP, its privacy figures.
Nothing outside its module branches on its name.

A layer sees its own settings and a `Context` (the stack's shared numbers),
never the run's configuration; which other components it refuses is its
`rules` (`tffpipe.components.Rule`), checked with every other component's in
`tffpipe/config/components.py`.

Roles, from the outside in:
* `wrapper`: takes the factory built so far and wraps it (zeroing, a user's
  layer);
* `mean`: turns the value sum into the mean; exactly one is used, the first
  active one in registry order (DP mechanisms are means: they normalise the
  noisy sum; the plain mean comes last and is always active);
* `sum`: how values are summed under the mean (secure sum, quantization);
  at most one.

Layer modules import TensorFlow Federated inside `build`, never at import:
the launcher reads the layers' settings to define its flags, and flag errors
are reported before TensorFlow loads.
"""

import dataclasses
from typing import Any
from collections.abc import Iterable, Mapping

from tffpipe.components import Rule, Selection


@dataclasses.dataclass(frozen=True)
class Line:
    """One line of the printed stack: a short name and what it does."""

    name: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Context:
    """What the layers of one stack share.

    Attributes:
      settings: this layer's own settings (set for each layer as it is built).
      weighted: whether the mean is weighted by number of examples.
      secure: whether any layer of the stack sums with secure aggregation,
        so that the others estimate their norms and counts securely too.
      clients_per_round: the cohort size.
      noise_multiplier: the DP noise multiplier (solved from a target
        epsilon when one was given); None without DP.
      clip_norm: the DP clipping norm in effect; None without DP.
      record_bound: the fixed coordinate-wise bound of the values reaching
        the sum (the DP clip of a mean that clips records), else None.
    """

    settings: Any
    weighted: bool
    secure: bool
    clients_per_round: int
    noise_multiplier: float | None = None
    clip_norm: float | None = None
    record_bound: float | None = None


class Layer:
    """Base class of an aggregation layer; subclasses override what they need."""

    key: str = ""  # registry key; also the name of its settings group
    Settings: type | None = None
    role: str = "wrapper"  # "wrapper", "mean" or "sum"
    secure_sum: bool = False  # the layer calls secure-sum intrinsics when active
    # Whether buffered asynchronous aggregation (--algorithm=fedbuff), which
    # aggregates in the launcher outside the stack, may run with it active:
    # True where leaving the layer out changes nothing a user asked for.
    outside_buffer_ok: bool = False

    # Means only.
    own_sum: bool = False  # sums values itself: no sum layer below it
    clips_records: bool = False  # bounds every value to [-clip, clip] before the sum

    # DP mechanisms only (mean layers that add noise).
    dp_mechanism: str | None = None  # the --dp value that selects it
    needs_uniform_weighting: bool = False
    default_clip_norm: float = 1.0
    amplified_by_sampling: bool = True  # False: accounted by participation (tree)

    # Combinations with other components this layer refuses, when active.
    rules: tuple[Rule, ...] = ()
    # Whether `check` and `rules` apply when the layer is not in the stack
    # (its settings matter to other layers' work).
    checked_when_inactive: bool = False

    def active(self, settings: Any, run: Selection) -> bool:
        """Whether the run puts this layer in the stack."""
        raise NotImplementedError

    def check(self, settings: Any, run: Selection) -> None:
        """Refuses its own settings, when active, that cannot work in this run (`ConfigError`)."""

    def resume_fingerprint(self, settings: Any, run: Selection) -> dict[str, Any]:
        """Settings that may change on resume elsewhere but must match under this layer.

        Returns:
          {flag name: value}, added to the checkpoint fingerprint when active.
        """
        return {}

    def check_noise(self, noise_multiplier: float, clients_per_round: int) -> None:
        """DP: refuses a noise multiplier the mechanism cannot use."""

    def build(self, inner: Any, ctx: Context) -> Any:
        """The TFF aggregation factory of this layer around `inner`.

        For a `sum`, `inner` is None; for a `mean`, the sum factory (or None
        for TFF's plain sum); for a `wrapper`, the stack built so far.
        """
        raise NotImplementedError

    def around_mean(self, mean_factory: Any, ctx: Context) -> Any:
        """`sum` layers: what the layer needs around the mean (e.g. a clip)."""
        return mean_factory

    def lines(self, ctx: Context) -> list[Line]:
        """Its lines in the printed stack (`mean`s: those above the sum)."""
        return []

    def lines_below_sum(self, ctx: Context) -> list[Line]:
        """`mean`s: lines printed below the sum's (the normalisation)."""
        return []

    def lines_around_mean(self, ctx: Context) -> list[Line]:
        """`sum`s: lines of `around_mean`, printed above the mean's."""
        return []

    def privacy_figures(
        self, aggregator_metrics: Mapping[str, Any], noise_multiplier: float, memo: dict
    ) -> tuple[dict[str, float], Any]:
        """DP: per-round figures from the aggregator's metrics.

        Args:
          aggregator_metrics: what the aggregator reported this round.
          noise_multiplier: the run's noise multiplier.
          memo: a dict kept across the run's rounds for this layer.

        Returns:
          (`privacy/...` metrics, the round's DP event if the layer knows it
          better than the aggregator's state, else None).
        """
        return {}, None


def find_mappings(tree: Any, keys: tuple[str, ...]) -> list[Mapping[str, Any]]:
    """Every mapping (or named tuple) in a nested structure holding all `keys`.

    Depth first, in order; a match is not searched further.
    """
    if hasattr(tree, "_asdict"):
        tree = tree._asdict()
    if isinstance(tree, Mapping):
        if all(k in tree for k in keys):
            return [tree]
        values: Iterable[Any] = tree.values()
    elif isinstance(tree, (list, tuple)):
        values = tree
    else:
        return []
    return [found for value in values for found in find_mappings(value, keys)]
