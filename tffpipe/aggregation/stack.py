"""Composes the model-update aggregator from `tff.aggregators` factories.

One entry point, `build_aggregator`. Outermost first, a stack is:

  zeroing -> [clipping] -> [DP noise] -> [secure sum | quantization] -> mean

* zeroing (default on): an update whose norm is far above the others' counts
  as zero, so one broken client cannot ruin the model. TFF's client work
  already zeroes non-finite updates (with weight 0) in every algorithm here;
  zeroing catches the finite but huge ones.
* DP (`--dp`): clipping and Gaussian noise by `DifferentiallyPrivateFactory`
  (fixed or adaptive clipping, or DP-FTRL tree aggregation), or the
  distributed discrete Gaussian with its own secure sum.
* secure sum (`--secure_aggregation`): `SecureSumFactory`, alone (after TFF's
  adaptive clipping, which bounds the integer range) or under DP.
* quantization (`--compression`): `EncodedSumFactory` uniform quantization.

Where TFF has the whole stack as one public function (`robust_aggregator`,
`secure_aggregator`) it is used as is.
"""

import dataclasses
import math
from typing import Sequence

import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_federated.python.aggregators import distributed_dp

from tffpipe import compat
from tffpipe import config as config_lib
from tffpipe.privacy import accounting as privacy
from tffpipe.program import sampling

AggregationFactory = tff.aggregators.AggregationFactory


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of the stack: a short name and what it does."""

    name: str
    detail: str


@dataclasses.dataclass(frozen=True)
class AggregatorParams:
    """What `build_aggregator` derived from the config.

    Attributes:
      layers: the stack, outermost first.
      weighted: whether the factory is a `WeightedAggregationFactory`.
      uses_secure_sum: whether the process will call secure-sum intrinsics.
      noise_multiplier: the DP noise multiplier (solved from a target epsilon
        when one was given); None without DP.
      noise_from_target: whether `noise_multiplier` was solved for.
      clip_norm: the DP clipping norm (initial norm under adaptive clipping).
    """

    layers: tuple[Layer, ...]
    weighted: bool
    uses_secure_sum: bool
    noise_multiplier: float | None = None
    noise_from_target: bool = False
    clip_norm: float | None = None

    def describe(self) -> str:
        """The stack as a short indented tree, one layer a line."""
        heads = [
            "  " * depth + ("└ " if depth else "") + layer.name
            for depth, layer in enumerate(self.layers)
        ]
        width = max(len(head) for head in heads)
        lines = ["aggregation stack (outermost first):"]
        for head, layer in zip(heads, self.layers):
            lines.append(f"  {head.ljust(width)}  {layer.detail}")
        return "\n".join(lines)

    @property
    def summary(self) -> str:
        """`zeroing -> DP -> secure sum -> mean`."""
        return " -> ".join(layer.name for layer in self.layers)


def participation(cfg: config_lib.RunConfig, train_client_ids: Sequence[str]) -> list[list[int]]:
    """The rounds each training client takes part in, for the whole run."""
    schedule = cfg.schedule
    rounds_of: dict[str, list[int]] = {cid: [] for cid in train_client_ids}
    for round_num in range(1, schedule.rounds + 1):
        for cid in sampling.sample_clients(
            list(train_client_ids),
            schedule.clients_per_round,
            seed=schedule.seed,
            round_num=round_num,
        ):
            rounds_of[cid].append(round_num)
    return list(rounds_of.values())


def resolve_noise_multiplier(
    cfg: config_lib.RunConfig, train_client_ids: Sequence[str]
) -> tuple[float, bool]:
    """The DP noise multiplier: as given, or solved from `--dp_target_epsilon`.

    Returns:
      (noise multiplier, whether it was solved for).

    Raises:
      ConfigError: the solved noise does not fit the mechanism.
    """
    dp = cfg.aggregation.dp
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier, False
    noise = privacy.noise_for_run(
        dp.mechanism,
        dp.target_epsilon,
        cfg.schedule.rounds,
        clients_per_round=cfg.schedule.clients_per_round,
        num_clients=len(train_client_ids),
        delta=dp.resolved_delta,
        participation=participation(cfg, train_client_ids) if dp.mechanism == "tree" else (),
    )
    if dp.mechanism == "adaptive":
        try:
            config_lib.check_adaptive_noise(noise, cfg.schedule.clients_per_round)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(
                f"--dp_target_epsilon={dp.target_epsilon:g} needs noise multiplier "
                f"{noise:.3f}; {e}"
            ) from e
    return noise, True


class _TreeAggregationFactory(tff.aggregators.UnweightedAggregationFactory):
    """DP-FTRL tree aggregation, built when the value type is known.

    `DifferentiallyPrivateFactory.tree_aggregation` needs the record specs up
    front; the learning process only reveals them to `create`.
    """

    def __init__(self, noise_multiplier, clients_per_round, clip_norm, record_factory):
        self._args = (noise_multiplier, float(clients_per_round), clip_norm)
        self._record_factory = record_factory

    def create(self, value_type):
        specs = tff.types.type_to_tf_tensor_specs(value_type)
        noise, clients, clip = self._args
        return tff.aggregators.DifferentiallyPrivateFactory.tree_aggregation(
            noise,
            clients,
            clip,
            record_specs=specs,
            record_aggregation_factory=self._record_factory,
        ).create(value_type)


def _secure_record_sum(clip: float) -> tff.aggregators.UnweightedAggregationFactory:
    # Clipped records lie in [-C, C] coordinate-wise: a fixed integer range.
    return tff.aggregators.SecureSumFactory(upper_bound_threshold=float(clip))


def _dp_factory(
    cfg: config_lib.RunConfig, noise: float
) -> tuple[tff.aggregators.UnweightedAggregationFactory, list[Layer]]:
    dp, k = cfg.aggregation.dp, cfg.schedule.clients_per_round
    clip, secure = dp.resolved_clip_norm, cfg.aggregation.secure
    record_sum = _secure_record_sum(clip) if secure else None
    secure_layer = Layer(
        "secure sum", f"clipped values in [-{clip:g}, {clip:g}] quantised to 32-bit integers"
    )
    mean_layer = Layer("mean", f"uniform, divided by the expected {k} clients per round")
    noise_detail = f"Gaussian, stddev {noise:.4g} x clip on the sum"
    if dp.mechanism == "fixed":
        query = tfp.NormalizedQuery(
            tfp.GaussianSumQuery(l2_norm_clip=clip, stddev=clip * noise), denominator=float(k)
        )
        # `gaussian_fixed` builds exactly this query but cannot take a record
        # aggregation factory, which secure summing needs.
        factory = tff.aggregators.DifferentiallyPrivateFactory(query, record_sum)
        layers = [Layer("clipping", f"fixed L2 norm {clip:g}"), Layer("DP", noise_detail)]
    elif dp.mechanism == "adaptive":
        factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier=noise,
            clients_per_round=float(k),
            initial_l2_norm_clip=clip,
            target_unclipped_quantile=dp.resolved_target_quantile,
            learning_rate=dp.resolved_clip_learning_rate,
        )
        layers = [
            Layer(
                "clipping",
                f"adaptive L2 norm from {clip:g} towards the "
                f"{dp.resolved_target_quantile:g} quantile (Andrew et al. 2021)",
            ),
            Layer("DP", noise_detail + " (total, including the clipped count)"),
        ]
    elif dp.mechanism == "tree":
        factory = _TreeAggregationFactory(noise, k, clip, record_sum)
        layers = [
            Layer("clipping", f"fixed L2 norm {clip:g}"),
            Layer("DP", f"tree aggregation (DP-FTRL), stddev {noise:.4g} x clip per tree node"),
        ]
    else:  # distributed
        bits = dp.resolved_distributed_bits
        ddp = distributed_dp.DistributedDpSumFactory(
            noise_multiplier=noise,
            expected_clients_per_round=k,
            bits=bits,
            l2_clip=clip,
            mechanism="distributed_dgauss",
            rotation_type="hd",
        )
        # As in `tff.learning.ddp_secure_aggregator`, which fixes adaptive
        # clipping and the Skellam mechanism; DistributedDpSumFactory itself
        # is not exported by TFF 0.87.
        factory = tff.aggregators.UnweightedMeanFactory(
            value_sum_factory=ddp,
            count_sum_factory=tff.aggregators.SecureSumFactory(
                upper_bound_threshold=1, lower_bound_threshold=0
            ),
        )
        return factory, [
            Layer("clipping", f"fixed L2 norm {clip:g}, randomised Hadamard rotation"),
            Layer(
                "DP",
                f"distributed discrete Gaussian: each client adds its share of "
                f"stddev {noise:.4g} x clip (Kairouz et al. 2021)",
            ),
            Layer("secure sum", f"{bits}-bit modular sum of the noisy integers"),
            Layer("mean", "uniform, divided by the securely summed client count"),
        ]
    return factory, layers + ([secure_layer] if secure else []) + [mean_layer]


def _plain_factory(cfg: config_lib.RunConfig, weighted: bool) -> tuple[AggregationFactory, list[Layer]]:
    agg = cfg.aggregation
    weights = "weighted by number of examples" if weighted else "uniform"
    zeroing = [_zeroing_layer()] if agg.zeroing else []
    if agg.secure:
        factory = tff.learning.secure_aggregator(
            zeroing=agg.zeroing, clipping=True, weighted=weighted
        )
        return factory, zeroing + [
            Layer("clipping", "adaptive L2 norm towards the 0.8 quantile (bounds the integer range)"),
            Layer("mean", weights),
            Layer("secure sum", "values quantised to 32-bit integers within the clipping norm"),
        ]
    if agg.compression == "uniform_quantization":
        bits = agg.resolved_compression_bits
        # `tff.learning.compression_aggregator` hard-codes 8 bits; this is its
        # stack with the bit width and size threshold from the config.
        factory = tff.aggregators.EncodedSumFactory.quantize_above_threshold(
            quantization_bits=bits, threshold=agg.compression_min_elements
        )
        factory = (
            tff.aggregators.MeanFactory(factory)
            if weighted
            else tff.aggregators.UnweightedMeanFactory(factory)
        )
        if agg.zeroing:
            factory = _zeroing(factory, secure=False)
        return factory, zeroing + [
            Layer("mean", weights),
            Layer(
                "quantization",
                f"uniform, {bits} bits per value, tensors over "
                f"{agg.compression_min_elements} elements",
            ),
        ]
    factory = tff.learning.robust_aggregator(zeroing=agg.zeroing, clipping=False, weighted=weighted)
    return factory, zeroing + [Layer("mean", weights)]


def _zeroing_layer() -> Layer:
    return Layer("zeroing", "updates above an adaptive norm bound (2 x the 0.98 quantile + 1) count as 0")


def _zeroing(factory, secure: bool):
    # TFF's own adaptive zeroing (`model_update_aggregator._default_zeroing`,
    # private), restated with public symbols to wrap our DP stacks.
    norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=10.0,
        target_quantile=0.98,
        learning_rate=math.log(10.0),
        multiplier=2.0,
        increment=1.0,
        secure_estimation=secure,
    )
    count_factory = (
        tff.aggregators.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0)
        if secure
        else None
    )
    return tff.aggregators.zeroing_factory(norm, factory, zeroed_count_sum_factory=count_factory)


def build_aggregator(
    cfg: config_lib.RunConfig, train_client_ids: Sequence[str]
) -> tuple[AggregationFactory, AggregatorParams]:
    """The model-update aggregation factory the config asks for.

    Args:
      cfg: the run's settings (validated).
      train_client_ids: the training clients, for privacy calibration.

    Returns:
      The factory (weighted unless the client weighting is uniform) and what
      was derived: the layers, the noise multiplier, whether secure sums are
      used.

    Raises:
      ConfigError: a setting that only fails once the task is known.
    """
    compat.allow_deeply_nested_computations()
    agg, dp = cfg.aggregation, cfg.aggregation.dp
    weighted = cfg.client_weighting == "num_examples"
    if not dp.enabled:
        factory, layers = _plain_factory(cfg, weighted)
        return factory, AggregatorParams(tuple(layers), weighted, agg.uses_secure_sum)
    noise, solved = resolve_noise_multiplier(cfg, train_client_ids)
    factory, layers = _dp_factory(cfg, noise)
    if agg.zeroing:
        factory = _zeroing(factory, secure=agg.uses_secure_sum)
        layers = [_zeroing_layer()] + layers
    return factory, AggregatorParams(
        tuple(layers),
        weighted=False,
        uses_secure_sum=agg.uses_secure_sum,
        noise_multiplier=noise,
        noise_from_target=solved,
        clip_norm=dp.resolved_clip_norm,
    )
