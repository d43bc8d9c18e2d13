"""`--runtime=remote`: each round's clients split across TFF worker services on other machines.

Workers are `python -m tffpipe.worker --port=N --tls_dir=DIR`; the engine,
with bounded waits and failover, is `remote_context.FailoverContext`. The
launcher calls them over mutual TLS with its own certificate (`--tls_dir`,
made by `python -m tffpipe.certs`), or plaintext with `--insecure_workers`.
"""

import contextlib
import dataclasses
import re

from tffpipe import settings
from tffpipe.errors import ConfigError
from tffpipe.runtimes import base

_WORKER_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
# At the start every worker gets at least this long to accept a connection.
MIN_CONNECT_SEC = 1.0


@dataclasses.dataclass(frozen=True)
class Settings:
    workers: tuple[str, ...] = settings.setting(
        (),
        "The TFF worker services (`python -m tffpipe.worker`) as HOST:PORT,HOST:PORT,...",
        flag="workers",
        group="runtime",
        applies=("runtime", ("remote",)),
        resume=settings.NOT_APPLICABLE,
    )
    worker_wait_sec: float = settings.setting(
        30.0,
        "Seconds a worker is waited for: at the start (at least 1), and when it stops "
        "answering, before its share runs again on the other workers.",
        flag="worker_wait_sec",
        group="runtime",
        check=settings.at_least(0),
        applies=("runtime", ("remote",)),
        resume=settings.NOT_APPLICABLE,
    )
    tls_dir: str = settings.setting(
        "",
        "This launcher's certificate folder (`python -m tffpipe.certs issue DIR NAME --role=launcher`): "
        "workers are called over mutual TLS and must hold a certificate from the same CA.",
        flag="tls_dir",
        group="runtime",
        applies=("runtime", ("remote",)),
        resume=settings.NOT_APPLICABLE,
    )
    insecure_workers: bool = settings.setting(
        False,
        "Call the workers over plaintext gRPC instead of mutual TLS (a warning at every start): "
        "anyone on the network can read the examples and the model, and reach the workers.",
        flag="insecure_workers",
        group="runtime",
        applies=("runtime", ("remote",)),
        resume=settings.NOT_APPLICABLE,
    )


class RemoteRuntime(base.Runtime):
    key = "remote"
    Settings = Settings
    summary = "TFF workers on other machines"

    def check(self, ctx, run):
        s = self.settings(ctx)
        if ctx.selected != self.key:
            if s.workers:
                raise ConfigError(f"--workers applies to --runtime=remote, not --runtime={ctx.selected}")
            return
        if not s.workers:
            raise ConfigError("--runtime=remote needs --workers=HOST:PORT,HOST:PORT,...")
        for address in s.workers:
            match = _WORKER_ADDRESS.match(address)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise ConfigError(f"--workers: {address!r} is not HOST:PORT")
        if len(set(s.workers)) != len(s.workers):
            raise ConfigError("--workers lists a worker twice")
        if s.tls_dir and s.insecure_workers:
            raise ConfigError("--tls_dir and --insecure_workers exclude each other")
        if not s.tls_dir and not s.insecure_workers:
            raise ConfigError(
                "--runtime=remote needs --tls_dir (this launcher's folder from `python -m tffpipe.certs issue "
                "DIR NAME --role=launcher`), or --insecure_workers to send everything in plaintext"
            )

    def credentials(self, ctx):
        """The launcher's TLS credentials, or None with --insecure_workers (`ConfigError` in one line)."""
        from tffpipe.runtimes import tls

        s = self.settings(ctx)
        if not s.tls_dir:
            return None
        try:
            return tls.load(s.tls_dir, "launcher")
        except tls.TlsError as e:
            raise ConfigError(str(e)) from e

    def preflight(self, ctx, print_fn):
        from tffpipe.runtimes import remote_context

        s = self.settings(ctx)
        remote_context.check_workers(s.workers, max(s.worker_wait_sec, MIN_CONNECT_SEC), self.credentials(ctx))

    @contextlib.contextmanager
    def running(self, process, ctx, print_fn):
        from tffpipe.compat import context_stack_impl

        from tffpipe.runtimes import contexts
        from tffpipe.runtimes import remote_context

        s = self.settings(ctx)
        remote_context.check_mergeable(process.next)
        credentials = self.credentials(ctx)
        context = remote_context.FailoverContext(s.workers, s.worker_wait_sec, print_fn, credentials)
        print_fn(remote_context.describe(s.workers, s.worker_wait_sec))
        print_fn(remote_context.describe_transport(len(s.workers), credentials))
        if contexts.uses_secure_sum(process.next):
            print_fn(contexts.REMOTE_SECURE_NOTE)
        # Every TFF computation, evaluation included, runs across the workers.
        try:
            with context_stack_impl.context_stack.install(context):
                yield process
        finally:
            context.close()

    def doctor_checks(self, ctx, gpus_seen):
        from tffpipe.runtimes import remote_context

        s = self.settings(ctx)
        try:
            credentials = self.credentials(ctx)
        except ConfigError as e:
            yield ("FAIL", "launcher certificate", str(e))
            return
        yield (
            ("warn", "transport", "plaintext to the workers (--insecure_workers)")
            if credentials is None
            else ("ok", "launcher certificate", credentials.describe())
        )
        for address in s.workers:
            try:
                remote_context.check_workers([address], max(min(s.worker_wait_sec, 5.0), MIN_CONNECT_SEC), credentials)
                yield ("ok", f"worker {address}", "accepts connections")
            except remote_context.WorkerUnavailable as e:
                yield ("FAIL", f"worker {address}", str(e).split(": ", 1)[1])


RUNTIME = RemoteRuntime()
