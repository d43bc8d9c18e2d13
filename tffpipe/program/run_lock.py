"""One launcher per run folder: an OS file lock held for the whole run.

Two launchers on one folder would resume the same checkpoint and interleave
their rounds, metrics and TensorBoard steps. The lock is `flock(2)` on
`RUN_DIR/.lock`: the kernel drops it when its holder exits in any way
(SIGKILL included), so a dead launcher never leaves a stale lock. The lock
file sits beside the run folder (`ROOT_DIR/.EXPERIMENT_NAME.lock`), so a run
that stops before writing anything leaves no folder behind; it names the
holder (pid, host, start time) so the refusal can say who it is.
`flock` on NFS is only as good as the server's lock support; run folders on
shared file systems are best given one launcher by convention too.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from tffpipe import errors


class RunInUse(errors.UserError, RuntimeError):
    """Another live launcher holds the run folder."""


# Folders this process holds, with how many nested `hold`s: the launcher
# takes the lock before TensorFlow loads, and `api.train` (which notebooks
# call directly) takes it again.
_held: dict[str, int] = {}


@contextlib.contextmanager
def hold(run_dir: str) -> Iterator[None]:
    """Holds the lock of `run_dir` for the duration of the block.

    Raises:
      RunInUse: another process holds it (named by pid and host).
    """
    key = os.path.realpath(run_dir)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        os.makedirs(os.path.dirname(key), exist_ok=True)
        fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise errors.ConfigError(f"--root_dir: cannot write to {run_dir}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(
                f"{run_dir} is in use by another launcher ({_describe_owner(fd)}); wait for it "
                "to finish or stop it, or choose another --experiment_name"
            ) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        # Closing the descriptor releases the lock; the file stays (removing
        # it would let a third launcher lock a new inode while a second one
        # waits on the old).
        os.close(fd)


def lock_path(run_dir: str) -> str:
    """The lock file of `run_dir`: a hidden file beside it."""
    parent, name = os.path.split(os.path.realpath(run_dir))
    return os.path.join(parent, f".{name}.lock")


def _describe_owner(fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["started"])))
        return f"pid {int(owner['pid'])} on {owner['host']}, started {started}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        # The owner has locked the file but not yet written its name.
        return "owner not yet recorded"
