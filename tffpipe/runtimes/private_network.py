"""Runs TFF's `worker_binary` where no other host (and no other user) can reach it.

`worker_binary` listens on every interface (`[::]:PORT`) with no TLS and no
authentication, and has no flag to change that; whoever reaches the port can
run TensorFlow graphs on this machine, `tf.io.read_file` and `tf.io.write_file`
included. So tffpipe starts it inside a network namespace of its own (the
kernel's mechanism; an unprivileged user gets one inside a user namespace,
which most Linux distributions allow): there its only interface is a private
loopback, so `[::]:PORT` is reachable from nowhere else.

The launcher reaches it through a Unix socket in a folder only its user can
open (0700): this program binds that socket *outside* the port's namespace
(filesystem sockets are not tied to a network namespace), and copies bytes
between each connection and the worker's port inside. The kernel offers no way
to export one TCP port of a namespace without privileges (a veth pair needs
CAP_NET_ADMIN on the host), hence this small relay.

Run as `python -m tffpipe.runtimes.private_network SOCKET PORT -- WORKER_ARGS...`;
it exits with the worker's status, and forwards SIGINT/SIGTERM to it. The
worker dies with this process, and this process with its parent (SIGKILL
included). Linux only. Imports nothing from tffpipe or TensorFlow: it starts in
tens of milliseconds.
"""

import asyncio
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import contextlib

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_CHUNK = 1 << 18
_PROBE = (
    "import ctypes, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"sys.exit(0 if libc.unshare({_CLONE_NEWUSER | _CLONE_NEWNET}) == 0 else ctypes.get_errno())\n"
)
_unavailable_reason: list[str | None] = []


def unavailable_reason() -> str | None:
    """None when this machine lets us make a private network namespace; otherwise why not (cached)."""
    if not _unavailable_reason:
        if not sys.platform.startswith("linux"):
            reason = "network namespaces are Linux-only"
        else:
            probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, check=False)
            reason = None
            if probe.returncode != 0:
                error = os.strerror(probe.returncode) if 0 < probe.returncode < 256 else "failed"
                reason = (
                    f"this system refuses an unprivileged network namespace (unshare: {error}; "
                    "user namespaces disabled, e.g. kernel.unprivileged_userns_clone=0 or a container's seccomp profile)"
                )
        _unavailable_reason.append(reason)
    return _unavailable_reason[0]


def command(socket_path: str, port: int, worker_args: list[str]) -> list[str]:
    """The command that runs `worker_args` (listening on `port`) privately, reachable at `socket_path`."""
    return [
        sys.executable,
        "-m",
        "tffpipe.runtimes.private_network",
        socket_path,
        str(port),
        str(os.getpid()),
        "--",
        *worker_args,
    ]


def _enter_private_network() -> None:
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER | CLONE_NEWNET)")
    # The same ids inside as outside: files the worker writes belong to the user.
    for path, text in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1"),
        ("/proc/self/gid_map", f"{gid} {gid} 1"),
    ):
        with open(path, "w", encoding="ascii") as f:
            f.write(text)
    # A new namespace's loopback is down.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, request + b"\0" * 14)[:18])[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP) + b"\0" * 14)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # Ignored signals stay ignored across exec: a launcher started as a
    # background job of a script (`cmd &`) ignores SIGINT, and the worker
    # would ignore the SIGINT forwarded to stop it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _relay(port: int, outside: socket.socket, worker: subprocess.Popen, parent: int) -> int:
    async def connection(client_reader, client_writer):
        try:
            worker_reader, worker_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_writer.close()  # not serving yet; the caller's gRPC channel retries
            return
        await asyncio.gather(_pipe(client_reader, worker_writer), _pipe(worker_reader, client_writer))

    loop = asyncio.get_running_loop()

    def forward(sig: int) -> None:
        if worker.poll() is None:
            worker.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forward, sig)
    server = await asyncio.start_unix_server(connection, sock=outside)
    async with server:
        while worker.poll() is None:
            if os.getppid() != parent:  # the launcher is gone (SIGKILL included)
                worker.kill()
                worker.wait()
                break
            await asyncio.sleep(0.1)
    return worker.returncode


def main(argv: list[str]) -> int:
    socket_path, port, parent, worker_args = argv[0], int(argv[1]), int(argv[2]), argv[4:]
    # Not PR_SET_PDEATHSIG: it fires when the launcher's *thread* that started
    # us exits, and TFF starts workers from threads that may end before the
    # launcher is done with the worker (a fresh-clone CI run hung on a TFF call
    # whose relay had died that way: a zombie, its socket left behind). The
    # relay watches its parent process instead, every 0.1 s.
    if os.getppid() != parent:  # gone before we started
        return 1
    # Bound before entering the namespace (a filesystem socket works from either side).
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(socket_path):
        os.unlink(socket_path)  # left by a relay that was SIGKILLed
    old_mask = os.umask(0o177)
    try:
        outside.bind(socket_path)
    finally:
        os.umask(old_mask)
    # Listening from the moment the path exists: a caller (or the launcher's
    # sweep of dead relays' folders) never finds it refusing while we start.
    outside.listen(64)
    try:
        _enter_private_network()
    except OSError as e:
        print(f"tffpipe: cannot make a private network for TFF's worker: {e}", file=sys.stderr, flush=True)
        os.unlink(socket_path)
        return 1
    worker = subprocess.Popen(worker_args, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)  # noqa: PLW1509 (the death signal must be set in the child, before exec)
    try:
        return abs(asyncio.run(_relay(port, outside, worker, parent)))
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        with contextlib.suppress(OSError):
            os.unlink(socket_path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
