"""The guard of a private Ray cluster: starts it, and kills all of it when the launcher goes.

Ray's own clean-up leaves processes behind when the driver that started the
cluster is SIGKILLed (measured with Ray 2.52.1: the dashboard agent and the
runtime-env agent outlive it), and Ray offers no option that ties a whole
local cluster to one process. So the launcher starts this small process in a
session of its own; it marks itself a child subreaper (every Ray process it
starts, and every process those start, stays its descendant even when its
parent dies), runs `ray start --head`, reports the address on stdout, and
waits until its stdin, a pipe only the launcher holds, closes: at the
launcher's exit, however it exits, SIGKILL included. Then it kills every
descendant, reaps them, removes the cluster's temporary folder and exits.

Run as `python -m tffpipe.runtimes.ray_guard TEMP_DIR -- RAY_START_ARGS...`.
Linux only (`prctl`).
"""

import ctypes
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import contextlib

_PR_SET_CHILD_SUBREAPER = 36
READY = "tffpipe-ray-ready"
FAILED = "tffpipe-ray-failed"


def descendants(root: int) -> list[int]:
    """Process ids whose chain of parents reaches `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # The command name (2nd field) may hold spaces and parentheses; ppid follows the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_all(temp_dir: str) -> None:
    """SIGKILLs every descendant until none is left, then removes `temp_dir`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = descendants(os.getpid())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        _reap()
    shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    temp_dir, start_args = argv[0], argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    # The launcher's Ctrl-C is its business; this process ends when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        started = subprocess.run(start_args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except OSError as e:
        started = subprocess.CompletedProcess(start_args, 1, "", str(e))
    if started.returncode != 0:
        lines = [line.strip() for line in (started.stdout + started.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)]
        reason = (errors or lines or [f"ray start exited with {started.returncode}"])[-1]
        print(f"{FAILED} {reason}", flush=True)
        kill_all(temp_dir)
        return 1
    print(READY, flush=True)
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], 1.0)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break  # the launcher closed its end, or died
        _reap()
    kill_all(temp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
