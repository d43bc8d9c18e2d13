"""`--attack=alie`: "A little is enough" (Baruch et al., NeurIPS 2019).

Every attacker sends mean - z * std of the benign updates, per coordinate:
a shift small enough to stay inside the spread of honest values, so that
coordinate-wise median and trimmed mean keep it, yet consistent across
attackers and rounds. z defaults to the paper's z_max for n clients a round
of which m attack: s = floor(n / 2 + 1) - m, z_max = Phi^-1((n - s) / n).

Where the statistics come from: the paper's attackers know (or estimate)
the benign updates' mean and standard deviation of the current step. In a
TFF round clients receive one broadcast before they train, so here the
attackers use those of the previous round's honest updates (kept in the
client work's state; attackers send their honest update in the first
round). Benign updates change little between consecutive rounds.
"""

import dataclasses
import math
import statistics

from tffpipe import settings
from tffpipe.attacks import base


@dataclasses.dataclass(frozen=True)
class Settings:
    z: float | None = settings.setting(
        None,
        "How many standard deviations the attackers shift the benign mean by.",
        flag="attack_alie_z",
        group="attacks",
        check=settings.positive,
        applies=("attack", ("alie",)),
        resume=settings.MUST_MATCH,
        default_text="the paper's z_max for --clients_per_round and --attack_fraction",
    )


def z_max(clients_per_round: int, attackers_per_round: int) -> float:
    """The paper's largest z that the median still accepts (its equation 3).

    A floor of 0.1 keeps the attack meaningful when the formula gives 0 or
    less (cohorts where the attackers could form a majority).
    """
    n, m = clients_per_round, attackers_per_round
    s = math.floor(n / 2 + 1) - m
    share = (n - s) / n
    if share <= 0.5 or share >= 1:
        return 0.1 if share <= 0.5 else 3.0
    return max(0.1, statistics.NormalDist().inv_cdf(share))


class Alie(base.UpdateAttack):
    key = "alie"
    Settings = Settings
    needs_benign_statistics = True

    def z(self, ctx) -> float:
        """The run's z: `--attack_alie_z`, or z_max for the cohort and the attack fraction."""
        given = ctx.settings.z
        if given is not None:
            return given
        n = ctx.clients_per_round
        return z_max(n, max(1, round(ctx.fraction * n)))

    def options(self, ctx):
        return base.UpdateOptions(scale=ctx.scale, alie_z=self.z(ctx))

    def poisoned_update(self, update, seed, options, benign=None):
        mean, std = benign
        return [m - options.alie_z * s for m, s in zip(mean, std)]

    def describe(self, ctx):
        return (
            "a little is enough: attackers send mean - z x std of the previous round's honest "
            f"updates, z = {self.z(ctx):.3g}"
        )


ATTACK = Alie()
