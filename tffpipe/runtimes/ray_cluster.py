"""The Ray cluster a run uses: a private one on this machine, or a cluster it joins.

A private cluster is started by `ray_guard` (so that every Ray process dies
with the launcher, SIGKILL included), listens for the loopback address, and
requires a token this process generates: Ray 2.52.1's GCS and raylet listen
on every interface whatever address they are given (checked here), so the
token is what keeps other hosts out. A cluster the run joins must require
token authentication too: this is checked by connecting without a token
(which such a cluster refuses); `allow_unauthenticated` lets an
unauthenticated cluster through, with a warning.
"""

import contextlib
import dataclasses
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping

from tffpipe import errors
from tffpipe.runtimes import ray_guard

_START_TIMEOUT_SEC = 120
# What every Ray process here is started with: no usage reports, no `uv run`
# wrapper around workers (Ray 2.43+ re-runs `uv run` for each worker when the
# driver runs under it, which re-syncs the environment: seconds per worker).
QUIET_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
# Ray starts workers at nice 15; sharing a core with the launcher or Ray's own
# services, an actor then got a third of its speed (100 digits clients, actor
# pinned to one core: 2.0 s against 0.7 s unpinned). A private cluster's
# actors are the run's work: normal priority.
PRIVATE_ENVIRONMENT = {"RAY_worker_niceness": "0"}
UNAUTHENTICATED_WARNING = (
    "warning: --ray_allow_unauthenticated: the Ray cluster at {address} accepts anyone who can reach it "
    "(it can run any code on its nodes); turn on token authentication (RAY_AUTH_MODE=token)"
)


class RayUnavailable(errors.UserError, RuntimeError):
    """The Ray cluster cannot be started, reached or trusted."""


@dataclasses.dataclass
class Cluster:
    """A connected Ray cluster; `close` disconnects (and stops it when private)."""

    address: str
    private: bool
    authenticated: bool
    guard: subprocess.Popen | None = None
    address_setting: str = ""  # the --ray_address it was made for

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        if self.guard is not None:
            with contextlib.suppress(OSError, AttributeError):  # (stdin is a pipe, never None)
                self.guard.stdin.close()  # type: ignore[union-attr]  # the guard kills the cluster and exits
            try:
                self.guard.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.guard.kill()
                self.guard.wait()
            self.guard = None


def describe_transport(cluster: "Cluster") -> str:
    """The run's transport line for Ray."""
    encrypted = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    where = "a private cluster on this machine" if cluster.private else f"the cluster at {cluster.address}"
    auth = "token authentication" if cluster.authenticated else "NO authentication (--ray_allow_unauthenticated)"
    return f"transport: Ray, {where}: {auth}; " + (
        "traffic between nodes encrypted (Ray's TLS, RAY_USE_TLS=1)"
        if encrypted
        else "traffic between nodes not encrypted (turn on Ray's TLS with RAY_USE_TLS=1 on every node)"
    )


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_pythonpath() -> str:
    # Workers import what the launcher imports (built-in `tasks`, a user's
    # `my_task:create_task` found through PYTHONPATH or the current folder).
    entries = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)]
    return os.pathsep.join(dict.fromkeys(entries))


def start_guarded_head(
    port: int,
    num_cpus: int,
    temp_dir: str,
    env: Mapping[str, str],
    *,
    num_gpus: int | None = None,
    stderr: int | None = None,
) -> subprocess.Popen:
    """`ray start --head` on 127.0.0.1:`port` under `ray_guard` (see `start_guarded`).

    `num_gpus` None lets Ray count the GPUs itself.
    """
    return start_guarded(
        [
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            *([f"--num-gpus={num_gpus}"] if num_gpus is not None else []),
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        temp_dir,
        env,
        stderr=stderr,
    )


def start_guarded(
    ray_start_args: list[str], temp_dir: str, env: Mapping[str, str], *, stderr: int | None = None
) -> subprocess.Popen:
    """`ray start <ray_start_args>` under `ray_guard`, which stops that node when its stdin closes.

    The guard prints `ray_guard.READY` (or `FAILED ...`) on its stdout once Ray
    is up; it and the node die with this process.
    """
    start = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", *ray_start_args]
    return subprocess.Popen(
        [sys.executable, "-m", "tffpipe.runtimes.ray_guard", temp_dir, "--", *start],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        text=True,
        start_new_session=True,
    )


def start_private(num_cpus: int, num_gpus: int, print_fn: Callable[[str], None]) -> Cluster:
    """Starts a private Ray cluster on this machine, token-authenticated, and connects to it.

    Raises:
      RayUnavailable: Ray failed to start (its last line of output).
    """
    token = secrets.token_hex(32)
    port = _free_loopback_port()
    # Short: Ray's Unix socket paths under it must stay within 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="tffray-", dir="/tmp")
    env = dict(
        os.environ,
        **QUIET_ENVIRONMENT,
        **PRIVATE_ENVIRONMENT,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PYTHONPATH=_worker_pythonpath(),
    )
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    print_fn(
        f"ray: starting a private cluster on this machine ({num_cpus} CPU(s), {num_gpus} GPU(s), token authentication)..."
    )
    guard = start_guarded_head(port, num_cpus, temp_dir, env, num_gpus=num_gpus, stderr=subprocess.DEVNULL)
    assert guard.stdout is not None and guard.stdin is not None  # pipes, as asked above
    line = guard.stdout.readline().strip()
    if not line.startswith(ray_guard.READY):
        guard.stdin.close()
        guard.wait(timeout=30)
        reason = line[len(ray_guard.FAILED) :].strip() if line.startswith(ray_guard.FAILED) else "its guard exited"
        raise RayUnavailable(f"--runtime=ray: the private Ray cluster did not start: {reason}")
    cluster = Cluster(f"127.0.0.1:{port}", private=True, authenticated=True, guard=guard)
    try:
        _connect(cluster.address, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    except BaseException:
        cluster.close()
        raise
    return cluster


def join(address: str, allow_unauthenticated: bool, print_fn: Callable[[str], None]) -> Cluster:
    """Connects to the cluster at `address` ("auto" or host:port).

    Raises:
      RayUnavailable: it cannot be reached, or accepts unauthenticated
        callers and `allow_unauthenticated` is False.
    """
    authenticated = requires_token(address)
    if not authenticated:
        if not allow_unauthenticated:
            raise RayUnavailable(
                f"--ray_address={address}: the Ray cluster accepts callers without a token; start it with "
                "RAY_AUTH_MODE=token (see docs/ray.md), or pass --ray_allow_unauthenticated on a "
                "network you trust"
            )
        print_fn(UNAUTHENTICATED_WARNING.format(address=address))
    elif os.environ.get("RAY_AUTH_MODE") != "token":
        raise RayUnavailable(
            f"--ray_address={address}: the Ray cluster requires token authentication; set RAY_AUTH_MODE=token "
            "and give its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        )
    _connect(address, {})
    return Cluster(address, private=False, authenticated=authenticated)


def requires_token(address: str) -> bool:
    """Whether the cluster at `address` refuses a caller without a token (a probe in a subprocess).

    Raises:
      RayUnavailable: nothing answers there.
    """
    if address != "auto":
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except OSError as e:
            raise RayUnavailable(
                f"--ray_address={address}: cannot reach a Ray cluster there ({e.strerror or e})"
            ) from e
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # Ray waits 60 s for an absent GCS by default.
    env.update(QUIET_ENVIRONMENT, RAY_AUTH_MODE="disabled", RAY_gcs_rpc_server_connect_timeout_s="15")
    probe = (
        "import sys, ray\n"
        "from ray._private import services\n"
        "address = services.canonicalize_bootstrap_address_or_die(sys.argv[1])\n"
        "try:\n"
        "    from ray._raylet import GcsClient\n"
        "    GcsClient(address=address).internal_kv_keys(b'', namespace=None, timeout=10)\n"
        "except ray.exceptions.AuthenticationError:\n"
        "    print('token-required'); sys.exit(0)\n"
        "print('open')\n"
    )
    try:
        found = subprocess.run(
            [sys.executable, "-c", probe, address], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise RayUnavailable(f"--ray_address={address}: no Ray cluster answered within 60 s") from e
    answer = found.stdout.strip().splitlines()[-1:] or [""]
    if answer[0] == "token-required":
        return True
    if answer[0] == "open":
        return False
    lines = [line for line in found.stderr.splitlines() if line.strip()]
    raise RayUnavailable(
        f"--ray_address={address}: cannot reach a Ray cluster there ({lines[-1] if lines else 'no answer'})"
    )


def _connect(address: str, auth_env: dict[str, str]) -> None:
    os.environ.update(QUIET_ENVIRONMENT, **auth_env)
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # Cython, no stubs

    # Ray reads its configuration (the authentication mode among it) and the
    # token once, when first used; a notebook may have imported Ray before.
    # Ray's own tests reset both this way (ray._private.authentication_test_utils).
    AuthenticationTokenLoader.instance().reset_cache()
    Config.initialize("")

    try:
        with warnings.catch_warnings():
            # A tip about a future default, printed at every connection.
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
            ray.init(
                address=address,
                log_to_driver=False,
                configure_logging=False,
                logging_level="ERROR",
                include_dashboard=False,
            )
    except Exception as e:
        # ConnectionError, AuthenticationError, RuntimeError: one line for all.
        reason = errors.first_line(e) if str(e).strip() else type(e).__name__
        if isinstance(e, ConnectionError) and os.environ.get("RAY_AUTH_MODE") == "token":
            reason += " (is the token this launcher holds the cluster's?)"
        raise RayUnavailable(f"--runtime=ray: cannot connect to the Ray cluster at {address}: {reason}") from e
