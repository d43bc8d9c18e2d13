"""Remote workers on this machine for the benchmarks, started as the README starts them.

`python -m tffpipe.worker` on loopback ports, over mutual TLS with
certificates from `python -m tffpipe.certs` (or plaintext), so the figures
include what a user's workers do: the TLS front and the relay into TFF's
private worker.
"""

import os
import select
import subprocess
import sys
import tempfile
import time

from tffpipe.runtimes import ray_guard
from tffpipe.runtimes import tls


def certificates() -> tuple[str, tls.Credentials]:
    """A fresh federation in a temporary folder: (a worker's folder for 127.0.0.1, the launcher's credentials)."""
    root = tempfile.mkdtemp(prefix="tffpipe-bench-certs-")
    for args in (
        ["init", root],
        ["issue", root, "127.0.0.1", "--role=worker"],
        ["issue", root, "launcher", "--role=launcher"],
    ):
        subprocess.run([sys.executable, "-m", "tffpipe.certs", *args], check=True, capture_output=True)
    return os.path.join(root, "127.0.0.1"), tls.load(os.path.join(root, "launcher"), "launcher")


def start(tls_dir: str | None) -> tuple[subprocess.Popen, str]:
    """One `python -m tffpipe.worker` on a free loopback port; (its process, its address)."""
    security = [f"--tls_dir={tls_dir}"] if tls_dir else ["--insecure_workers"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tffpipe.worker", "--port=0", "--bind=127.0.0.1", *security],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    line, deadline = b"", time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            byte = os.read(proc.stdout.fileno(), 1)
            if byte == b"\n":
                if line.startswith(b"tffpipe worker ready at "):
                    return proc, f"127.0.0.1:{line.split()[4].rsplit(b':', 1)[1].decode()}"
                line = b""
            else:
                line += byte
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("a worker did not start")


def pin(proc: subprocess.Popen, cores: set[int]) -> None:
    """Pins the worker, its relay and TFF's worker (every thread) to `cores`."""
    for pid in [proc.pid, *ray_guard.descendants(proc.pid)]:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cores)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
