"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022).

`--async_concurrency` clients train at once on the simulated clock
(`tffpipe/program/clock.py`), each from the server model current when it
starts. Their updates arrive in order of simulated finishing time; each is
weighted by its staleness (server updates since it started: `constant` 1,
`polynomial` 1/sqrt(1 + staleness)) and buffered, and every
`--async_buffer_size` arrivals the server optimizer applies the buffer's
mean. One such server update is a round. The run is `tffpipe/program/fedbuff.py`.

A client's update is TFF's: one round of FedAvg on that client alone with a
server SGD learning rate of 1 and a plain mean, from the model it started
with (so it runs through the run's runtime like any round). The buffer lives
in the launcher, outside the aggregation stack, so the layers that would
change what is aggregated are refused.
"""

import dataclasses
import math

from tffpipe import components
from tffpipe import settings
from tffpipe.errors import ConfigError
from tffpipe.learning import base

_APPLIES = ("algorithm", ("fedbuff",))
STALENESS = ("polynomial", "constant")


@dataclasses.dataclass(frozen=True)
class Settings:
    concurrency: int = settings.setting(
        10,
        "fedbuff: clients training at once.",
        flag="async_concurrency",
        group="algorithm",
        check=settings.at_least(1),
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
    )
    buffer_size: int = settings.setting(
        5,
        "fedbuff: client updates per server update (K).",
        flag="async_buffer_size",
        group="algorithm",
        check=settings.at_least(1),
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
    )
    staleness: str = settings.setting(
        "polynomial",
        "fedbuff: weight of an update that started s server updates ago: polynomial 1/sqrt(1+s), or constant 1.",
        flag="async_staleness",
        group="algorithm",
        choices=STALENESS,
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
    )


def staleness_weight(kind: str, staleness: int) -> float:
    return 1.0 / math.sqrt(1.0 + staleness) if kind == "polynomial" else 1.0


def _layers_the_buffer_leaves_out(run: components.Selection) -> list[str]:
    """The run's aggregation layers that would not apply outside the stack."""
    from tffpipe.aggregation import registry as aggregation_registry

    return [key for key in run.layers if not aggregation_registry.get(key).outside_buffer_ok]


class FedBuff(base.Algorithm):
    key = "fedbuff"
    # Each client's update is one single-client FedAvg round, whose
    # train/num_examples counts every example it trains.
    counts_each_example = True
    Settings = Settings
    asynchronous = True

    rules = (
        components.refuses(
            lambda ctx, run: bool(_layers_the_buffer_leaves_out(run)),
            lambda ctx, run: (
                f"--algorithm=fedbuff cannot run with the {_layers_the_buffer_leaves_out(run)[0]} aggregation "
                "layer: its buffer aggregates in the launcher, outside the aggregation stack (DP noise, secure "
                "sums, compression and robust rules would not apply)"
            ),
        ),
        components.refuses(
            lambda ctx, run: bool(run.rounds_closed_by),
            "--round_deadline_sec and --over_selection close synchronous rounds; --algorithm=fedbuff has "
            "none (a late client's update arrives stale instead)",
        ),
        components.refuses(
            lambda ctx, run: run.attack != "none",
            "--attack simulates clients of synchronous rounds; --algorithm=fedbuff has none",
        ),
        components.refuses(
            lambda ctx, run: "clients_per_round" in run.given,
            "--clients_per_round does not apply to --algorithm=fedbuff; it has --async_concurrency and "
            "--async_buffer_size",
        ),
        components.refuses(
            lambda ctx, run: "client_weighting" in run.given,
            "--client_weighting does not apply to --algorithm=fedbuff; it has --async_staleness: updates "
            "are weighted by staleness",
        ),
    )

    def check(self, ctx, run):
        s = ctx.settings
        if s.buffer_size > s.concurrency:
            raise ConfigError(
                f"--async_buffer_size={s.buffer_size} is larger than --async_concurrency={s.concurrency}: "
                "the buffer would wait for more updates than clients are training"
            )

    def build(self, parts):
        """The client trainer: FedAvg on one client, server SGD at 1, a plain mean."""
        from tffpipe.learning import builder

        return builder.build_single_client_trainer(parts.model_fn, parts.client_optimizer, parts.loop_implementation)


ALGORITHM = FedBuff()
