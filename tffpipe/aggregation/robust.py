"""`--robust`: a Byzantine-robust rule in place of the mean.

The rule sees every client's update (`collect.py` gathers them at the
server) and reduces them with one of `robust_rules.RULES`. It reports what
it did each round as `aggregator/robust/...` metrics (updates selected and
rejected, values trimmed, Weiszfeld iterations).

Combinations refused, with the reason:
  * secure aggregation: it exists so that the server sees only the sum;
    a rule that reads each update defeats it;
  * DP: the mechanisms here add noise calibrated to a clipped sum, which a
    robust rule does not compute, so no epsilon could be claimed;
  * compression: it quantises the sum's inputs, and there is no sum.
"""

import dataclasses

from tffpipe import components
from tffpipe import settings
from tffpipe.aggregation import base
from tffpipe.errors import ConfigError

DEFENCES = ("none", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median")
_PAPERS = {
    "median": "coordinate-wise median (Yin et al. 2018)",
    "trimmed_mean": "coordinate-wise trimmed mean (Yin et al. 2018), {trim:g} of the values trimmed at each end",
    "krum": "Krum (Blanchard et al. 2017): the one update closest to its n - f - 2 neighbours, f = {f}",
    "multi_krum": "Multi-Krum (Blanchard et al. 2017): the mean of the n - f best Krum scores, f = {f}",
    "bulyan": "Bulyan (El Mhamdi et al. 2018) over Krum, f = {f}",
    "geometric_median": "geometric median by smoothed Weiszfeld (RFA, Pillutla et al. 2022)",
}
_NEEDS_F = ("krum", "multi_krum", "bulyan")


@dataclasses.dataclass(frozen=True)
class Settings:
    defence: str = settings.setting(
        "none",
        "Byzantine-robust rule in place of the mean: median, trimmed_mean, krum, "
        "multi_krum, bulyan, geometric_median; it sees each client's update.",
        flag="robust",
        group="aggregation",
        choices=DEFENCES,
        resume=settings.MUST_MATCH,
        short=True,
    )
    trim_fraction: float = settings.setting(
        0.1,
        "Share of the values trimmed at each end of every coordinate.",
        flag="robust_trim_fraction",
        group="aggregation",
        check=settings.in_range(0, 0.5, closed_high=False),
        applies=("robust", ("trimmed_mean",)),
        resume=settings.MUST_MATCH,
    )
    num_byzantine: int = settings.setting(
        1,
        "How many Byzantine clients per round Krum, Multi-Krum and Bulyan tolerate (f).",
        flag="robust_num_byzantine",
        group="aggregation",
        check=settings.at_least(0),
        applies=("robust", _NEEDS_F),
        resume=settings.MUST_MATCH,
    )


def server_memory_bytes(cohort: int, num_parameters: int) -> int:
    """What the gathered updates take at the server (float32): the doctor checks it."""
    return cohort * num_parameters * 4


def minimum_cohort(defence: str, f: int) -> int:
    """The fewest updates a round needs for the rule's guarantee."""
    if defence == "bulyan":
        return 4 * f + 3
    if defence in ("krum", "multi_krum"):
        return 2 * f + 3
    return 1


def check_cohort(s: Settings, clients_per_round: int) -> None:
    """Refuses a cohort too small for the rule's guarantee."""
    needed = minimum_cohort(s.defence, s.num_byzantine)
    if clients_per_round < needed:
        rule = "n >= 4f + 3" if s.defence == "bulyan" else "n >= 2f + 3"
        raise ConfigError(
            f"--robust={s.defence} with --robust_num_byzantine={s.num_byzantine} needs at least "
            f"{needed} clients per round ({rule}), got --clients_per_round={clients_per_round}"
        )


class Robust(base.Layer):
    key = "robust"
    Settings = Settings
    role = "mean"
    own_sum = True
    needs_uniform_weighting = True

    rules = (
        components.refuses(
            lambda s, run: run.secure_aggregation,
            "--robust={s.defence} cannot run under --secure_aggregation: the rule reads each client's "
            "update, which secure aggregation exists to hide from the server",
        ),
        components.refuses(
            lambda s, run: run.dp != "none",
            "--robust={s.defence} cannot run under --dp={run.dp}: the DP mechanisms calibrate noise to a "
            "clipped sum, which a robust rule does not compute, so no epsilon could be claimed",
        ),
        components.refuses(
            lambda s, run: bool(run.cohort_changed_by),
            "--robust={s.defence} with {run.cohort_changed_by}: the rule is sized for --clients_per_round "
            "updates a round, and fewer may report",
        ),
        components.refuses(
            lambda s, run: run.compression != "none",
            "--robust={s.defence} cannot run under --compression: it quantises a sum, and there is none",
        ),
        components.refuses(
            lambda s, run: run.client_weighting == "num_examples",
            "--robust={s.defence} needs --client_weighting=uniform: robust rules treat every client's update alike",
        ),
    )

    def active(self, settings, run) -> bool:
        return settings.defence != "none"

    def check(self, settings, run) -> None:
        if run.clients_per_round is not None:
            check_cohort(settings, run.clients_per_round)

    def build(self, inner, ctx):
        from tffpipe.aggregation import collect
        from tffpipe.aggregation import robust_rules

        s = ctx.settings
        check_cohort(s, ctx.clients_per_round)
        options = {}
        if s.defence == "trimmed_mean":
            options["trim_fraction"] = s.trim_fraction
        if s.defence in _NEEDS_F:
            options["num_byzantine"] = s.num_byzantine
        return collect.CollectAndReduceFactory(robust_rules.RULES[s.defence], ctx.clients_per_round, **options)

    def lines(self, ctx):
        s = ctx.settings
        detail = _PAPERS[s.defence].format(trim=s.trim_fraction, f=s.num_byzantine)
        return [base.Line("robust", f"{detail}; the server holds all {ctx.clients_per_round} updates")]


LAYER = Robust()
