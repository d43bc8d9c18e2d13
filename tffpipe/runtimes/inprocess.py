"""`--runtime=inprocess`: the round compiled to TFF's MapReduceForm and run in this process.

Clients train in TensorFlow on every chosen device (`devices.py`), several
at once; secure sums use the run's protocol (`aggregation/protocols/`). The engine
is `inprocess_process.InProcessProcess`.
"""

import contextlib
import dataclasses

from tffpipe import settings
from tffpipe.runtimes import base

PREFETCH_CLIENTS = ("auto", "on", "off")
# The settings apply to this runtime and to `auto`, which may choose it.
_APPLIES = ("runtime", ("auto", "inprocess"))
# Settings of the engine itself also apply inside every Ray actor.
_APPLIES_TO_ENGINE = ("runtime", ("auto", "inprocess", "ray"))


def _gpus_check(value: str) -> str | None:
    if value in ("all", "none") or all(part.isdigit() for part in value.split(",")):
        return None
    return "must be 'all', 'none' or GPU indices like '0,1'"


@dataclasses.dataclass(frozen=True)
class Settings:
    gpus: str = settings.setting(
        "all",
        "GPUs to train clients on: all, none, or indices like 0,1.",
        flag="gpus",
        group="runtime",
        check=_gpus_check,
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )
    clients_per_gpu: int = settings.setting(
        1,
        "Clients trained at once on each GPU (each gets a logical GPU with its share of the memory).",
        flag="clients_per_gpu",
        group="runtime",
        check=settings.at_least(1),
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )
    parallel_clients: int = settings.setting(
        2,
        "Without GPUs: clients trained at once on each CPU device (in each Ray actor with --runtime=ray).",
        flag="parallel_clients",
        group="runtime",
        check=settings.at_least(1),
        applies=_APPLIES_TO_ENGINE,
        resume=settings.NOT_APPLICABLE,
    )
    cpu_devices: int = settings.setting(
        1,
        "Split the CPU into this many logical devices (tests use it to exercise the multi-GPU placement on a CPU).",
        flag="cpu_devices",
        group="runtime",
        check=settings.at_least(1),
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )
    clients_per_call: int = settings.setting(
        0,
        "Clients each slot trains in one TensorFlow call (their work traced into one graph); 0 picks "
        "4, 1 trains one client per call.",
        flag="clients_per_call",
        group="runtime",
        check=settings.at_least(0),
        applies=_APPLIES_TO_ENGINE,
        resume=settings.NOT_APPLICABLE,
    )
    stacked_training: str = settings.setting(
        "auto",
        "Train a round's clients on stacked copies of the model, many in one TensorFlow call, where it "
        "applies (FedAvg with plain SGD on clients, a Keras model whose layers have a stacked form): auto "
        "for rounds of 24 clients or more (smaller rounds run TFF's client work), on for every round, off never.",
        flag="stacked_training",
        group="runtime",
        choices=("auto", "on", "off"),
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )
    prefetch_clients: str = settings.setting(
        "auto",
        "Read each slot's next client into memory while the current one trains: on, off, "
        "or auto (on when clients train on GPUs; on the CPU it competes with training for the cores).",
        flag="prefetch_clients",
        group="runtime",
        choices=PREFETCH_CLIENTS,
        applies=_APPLIES_TO_ENGINE,
        resume=settings.NOT_APPLICABLE,
    )


class InProcessRuntime(base.Runtime):
    key = "inprocess"
    Settings = Settings
    executes_secure_sums = True
    summary = "the round in this process, on every core and GPU"

    def configure_devices(self, ctx):
        from tffpipe.runtimes import devices

        devices.configure(self.settings(ctx))

    def loop_implementation(self):
        # TFF's default, DATASET_REDUCE, runs each batch inside a ReduceDataset
        # op; run in-process that took 4.4x as long per client as
        # DATASET_ITERATOR (digits CNN: 0.95 vs 0.22 s for 10 clients), which is
        # also the loop GPUs need. Both loops compute the same updates, so
        # checkpoints move between runtimes.
        import tensorflow_federated as tff

        return tff.learning.LoopImplementation.DATASET_ITERATOR

    def wrap(self, process, ctx, print_fn, what="learning process"):
        """`process` on this runtime (`InProcessUnsupported` if it cannot run here)."""
        from tffpipe.runtimes import devices
        from tffpipe.runtimes import inprocess_process

        s = self.settings(ctx)
        return inprocess_process.build(
            process,
            devices.client_slots(s),
            what,
            print_fn,
            prefetch_clients=s.prefetch_clients,
            clients_per_call=s.clients_per_call,
            protocol=ctx.protocol(),
            stacked_training=s.stacked_training if what == "learning process" else "off",
        )

    @contextlib.contextmanager
    def running(self, process, ctx, print_fn):
        runner = self.wrap(process, ctx, print_fn)
        try:
            yield runner
        finally:
            runner.close()

    def evaluation(self, process, ctx, print_fn):
        return self.wrap(process, ctx, print_fn, "evaluation process")

    def doctor_checks(self, ctx, gpus_seen):
        from tffpipe.runtimes import devices

        slots = devices.client_slots(self.settings(ctx))
        used = sorted(set(slots))
        where = f"{len(slots)} client slot(s) on {', '.join(used)}"
        if gpus_seen and not any("GPU" in name for name in used):
            yield (
                "warn",
                "runtime inprocess",
                f"{where}; GPUs present but not used (--gpus={self.settings(ctx).gpus})",
            )
        else:
            yield ("ok", "runtime inprocess", where)


RUNTIME = InProcessRuntime()
