"""`--runtime=auto` (the default): the in-process runtime when the round compiles to TFF's MapReduceForm, TFF's C++ runtime otherwise.

The in-process runtime matches TFF's C++ runtime to about 3e-8 on the same
rounds and is about 3 times as fast on the default task; processes that TFF
cannot compile to a MapReduceForm (some users' algorithms) run in TFF's
runtime. One line says which was chosen and why.
"""

import contextlib

from tffpipe.runtimes import base
from tffpipe.runtimes import cpp
from tffpipe.runtimes import inprocess
from tffpipe.runtimes import ray


class AutoRuntime(base.Runtime):
    key = "auto"
    chooses_another = True
    executes_secure_sums = True  # refuses to fall back to cpp when the protocol needs the engine
    summary = "ray with --ray_address; else inprocess when the round compiles to a MapReduceForm, else cpp"

    def __init__(self):
        self._chosen: base.Runtime | None = None

    def configure_devices(self, ctx):
        if not ray.RUNTIME.chosen(ctx):
            inprocess.RUNTIME.configure_devices(ctx)

    def preflight(self, ctx, print_fn):
        if ray.RUNTIME.chosen(ctx):
            ray.RUNTIME.preflight(ctx, print_fn)

    def loop_implementation(self):
        return inprocess.RUNTIME.loop_implementation()

    @contextlib.contextmanager
    def running(self, process, ctx, print_fn):
        from tffpipe import errors

        if ray.RUNTIME.chosen(ctx):
            print_fn(f"runtime: ray (--runtime=auto with --ray_address={ray.RUNTIME.settings(ctx).ray_address})")
            self._chosen = ray.RUNTIME
            with ray.RUNTIME.running(process, ctx, print_fn) as runner:
                yield runner
            return
        try:
            runner = inprocess.RUNTIME.wrap(process, ctx, print_fn=lambda line: None)
        except errors.UserError as e:
            from tffpipe.aggregation.protocols import registry as protocols

            protocol = ctx.secure_protocol
            if protocols.needs_our_engine(protocol):
                raise errors.UserError(
                    f"--secure_protocol={protocol} needs the in-process runtime, and {e}; TFF's runtime, "
                    "the fallback, cannot run that protocol"
                ) from e
            print_fn(f"runtime: cpp (--runtime=auto: {e})")
            self._chosen = cpp.RUNTIME
            with cpp.RUNTIME.running(process, ctx, print_fn) as fallback:
                yield fallback
            return
        print_fn(
            f"runtime: inprocess (--runtime=auto: the round compiles to TFF's MapReduceForm; "
            f"{describe_slots(runner)})"
            + (f"; secure sums use {runner.protocol.summary}" if runner.uses_secure_sum else "")
        )
        if runner.uses_secure_sum:
            print_fn(runner.protocol.note("inprocess"))
        runner.say_stacking_to(print_fn)
        self._chosen = inprocess.RUNTIME
        try:
            yield runner
        finally:
            runner.close()

    def evaluation(self, process, ctx, print_fn):
        chosen = self._chosen or cpp.RUNTIME
        return chosen.evaluation(process, ctx, lambda line: None)


def describe_slots(runner) -> str:
    devices = sorted(set(runner.slot_devices))
    return f"{len(runner.slot_devices)} client slot(s) over {', '.join(devices)}"


RUNTIME = AutoRuntime()
