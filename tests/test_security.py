"""No stranger gets in: certificates, mutual TLS to remote workers, TFF workers in private networks.

Certificates are made by `python -m tffpipe.certs` as the README says; every
connection is to loopback.
"""

import datetime
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from conftest import REPO_ROOT, make_config, processes_with_marker, start_worker, worker_processes
from tffpipe.config import components
from tffpipe import certs
from tffpipe.program import loop
from tffpipe.runtimes import private_network
from tffpipe.runtimes import remote_context as remote
from tffpipe.runtimes import tls
from tffpipe.tasks import arrays

pytestmark = pytest.mark.skipif(
    private_network.unavailable_reason() is not None, reason="this system refuses private network namespaces"
)

# Every example's first two features: bytes a capture would show if examples crossed in plaintext.
MARKER = np.array([1234.5678, -8765.4321], np.float32)
READ_FILE = os.path.join(REPO_ROOT, "tests", "unauthenticated_read.py")


def certs_cli(*args, check=True):
    done = subprocess.run(
        [sys.executable, "-m", "tffpipe.certs", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two CAs (ours and a stranger's), each with a worker at 127.0.0.1 and a launcher."""
    root = tmp_path_factory.mktemp("certs")
    for ca in ("ours", "theirs"):
        certs_cli("init", str(root / ca))
        certs_cli("issue", str(root / ca), "127.0.0.1", "--role=worker", "--hosts=::1")
        certs_cli("issue", str(root / ca), "launcher", "--role=launcher")
    return root


def _secret_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker host's secret")
    return secret


def _unauthenticated_read(target: str, path: str) -> subprocess.CompletedProcess:
    """What a stranger runs: a TFF computation that reads `path`, over an insecure channel to `target`."""
    return subprocess.run(
        [sys.executable, READ_FILE, target, path], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_certs_command_makes_private_folders_and_refuses_in_one_line(federation):
    folder = federation / "ours" / "launcher"
    assert sorted(os.listdir(folder)) == ["ca.crt", "cert.crt", "key.pem"]
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert all(os.stat(folder / name).st_mode & 0o777 == 0o600 for name in os.listdir(folder))
    assert os.stat(federation / "ours" / "ca" / "ca.key").st_mode & 0o777 == 0o600
    again = certs_cli("issue", str(federation / "ours"), "launcher", "--role=launcher", check=False)
    assert (again.returncode, again.stderr) == (1, f"error: {folder} exists; remove it or pick another name\n")
    no_ca = certs_cli("issue", str(federation / "none"), "w", "--role=worker", check=False)
    assert no_ca.returncode == 1 and no_ca.stderr.count("\n") == 1 and "has no CA" in no_ca.stderr
    bad_role = certs_cli("issue", str(federation / "ours"), "w", "--role=admin", check=False)
    assert bad_role.returncode == 2 and bad_role.stderr.startswith("error: argument --role: invalid choice")
    shown = certs_cli("show", str(federation / "ours" / "127.0.0.1"))
    assert "certificate for CN=127.0.0.1" in shown.stdout


def test_a_tls_dir_is_checked_before_any_connection(federation, tmp_path):
    ours = federation / "ours"
    assert tls.load(str(ours / "launcher"), "launcher").name == "CN=launcher"
    with pytest.raises(tls.TlsError, match="is a launcher's, not a worker's"):
        tls.load(str(ours / "launcher"), "worker")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=900)
    with pytest.raises(tls.TlsError, match=r"the certificate of CN=launcher expired on \d{4}-\d\d-\d\d"):
        tls.load(str(ours / "launcher"), "launcher", now=later)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, source in (("ca.crt", ours), ("cert.crt", federation / "theirs"), ("key.pem", federation / "theirs")):
        (mixed / name).write_bytes(
            ((source / "launcher") if name != "ca.crt" else source / "ca").joinpath(name).read_bytes()
        )
    with pytest.raises(tls.TlsError, match="is not signed by the CA in ca.crt"):
        tls.load(str(mixed), "launcher")
    (mixed / "key.pem").write_bytes((ours / "launcher" / "key.pem").read_bytes())
    with pytest.raises(tls.TlsError, match="key.pem is not the key of cert.crt"):
        tls.load(str(mixed), "launcher")


def _credentials(federation, ca: str, cert_from: str, days_ago: int | None = None, without_certificate=False):
    """Credentials as an attacker would hold them (our CA to check the worker), not checked by `tls.load`."""
    if days_ago is not None:
        issued = certs.issue(
            str(federation / ca),
            f"expired-{days_ago}",
            "launcher",
            days=1,
            not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days_ago),
        )
        folder = issued.folder
    else:
        folder = federation / cert_from / "launcher"

    def read(path):
        return pathlib.Path(path).read_bytes()

    cert, key = (
        (None, None)
        if without_certificate
        else (read(os.path.join(folder, "cert.crt")), read(os.path.join(folder, "key.pem")))
    )
    return tls.Credentials(
        str(folder), read(federation / "ours" / "ca" / "ca.crt"), cert, key, "x", "x", datetime.datetime.now()
    )


def _self_signed(federation):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "launcher")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return tls.Credentials(
        "self-signed",
        (federation / "ours" / "ca" / "ca.crt").read_bytes(),
        cert.public_bytes(serialization.Encoding.PEM),
        key_pem,
        "x",
        "x",
        now,
    )


@pytest.fixture
def tls_workers(marker_env, federation):
    env, marker = marker_env
    started = [start_worker(env, args=(f"--tls_dir={federation / 'ours' / '127.0.0.1'}",)) for _ in range(2)]
    yield [p for p, _, _ in started], [a for _, a, _ in started], marker
    for proc, _, _ in started:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def total(values):
    return tff.federated_sum(values)


def test_tls_workers_serve_our_launcher_fail_over_and_refuse_strangers_in_one_line(tls_workers, federation, tmp_path):
    workers, addresses, marker = tls_workers
    ours = tls.load(str(federation / "ours" / "launcher"), "launcher")
    lines = []
    context = remote.FailoverContext(addresses, 1.0, lines.append, ours)
    with tff.framework.get_context_stack().install(context):
        assert total([1.0, 2.0, 3.0, 4.0]) == 10.0
        workers[1].kill()
        workers[1].wait()
        assert total([1.0, 2.0, 3.0, 5.0]) == 11.0  # all four clients, on the remaining worker
    context.close()
    assert lines and lines[-1].endswith(f"running the computation again on the remaining 1 worker(s): {addresses[0]}")

    refusals = {
        "plaintext": None,
        "no client certificate": _credentials(federation, "ours", "ours", without_certificate=True),
        "self-signed": _self_signed(federation),
        "expired": _credentials(federation, "ours", "ours", days_ago=10),
        "another CA's": _credentials(federation, "ours", "theirs"),
    }
    for case, credentials in refusals.items():
        with pytest.raises(remote.WorkerUnavailable) as refused:
            remote.check_workers(addresses[:1], 1.0, credentials)
        message = str(refused.value)
        assert message.startswith(f"worker {addresses[0]} is unreachable: ") and "\n" not in message, case
        if credentials is None:
            assert message.endswith("it closed a plaintext connection: it may serve TLS (give --tls_dir)"), message
        else:
            assert (
                "TLS handshake refused: the worker closed the connection on this launcher's certificate" in message
            ), case
    # The stranger's read of a file on the worker's host.
    secret = _secret_file(tmp_path)
    stolen = _unauthenticated_read(addresses[0], str(secret))
    assert stolen.returncode != 0 and "the worker host's secret" not in stolen.stdout
    assert stolen.stdout.strip().startswith("refused:"), stolen.stdout + stolen.stderr[-2000:]


class _RecordingProxy:
    """Forwards 127.0.0.1:port to `target`, keeping every byte that crosses it."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.seen = target, bytearray()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while data := source.recv(1 << 16):
                self.seen += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self):
        self._server.close()


def _marked_task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    x[:, :2] = MARKER
    y = rng.integers(0, 3, size=120)
    model = lambda: tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3)])  # noqa: E731
    return arrays.from_arrays(
        "marked", x, y, model, loss="SparseCategoricalCrossentropy", num_clients=6, partition="iid", eval_fraction=0.25
    )


# The plaintext case shows the check can fail: the same capture holds the examples.
@pytest.mark.parametrize("transport", ["tls", pytest.param("plaintext", marks=pytest.mark.slow)])
def test_a_capture_between_launcher_and_worker_holds_no_example_over_tls(marker_env, federation, tmp_path, transport):
    """A launcher trains on two workers; the traffic to one crosses a recording proxy."""
    env, _ = marker_env
    args = (f"--tls_dir={federation / 'ours' / '127.0.0.1'}",) if transport == "tls" else ("--insecure_workers",)
    started = [start_worker(env, args=args) for _ in range(2)]
    proxy = _RecordingProxy(("127.0.0.1", int(started[0][1].rsplit(":", 1)[1])))
    try:
        security = (
            {"tls_dir": str(federation / "ours" / "launcher")} if transport == "tls" else {"insecure_workers": True}
        )
        cfg = make_config(
            runtime="remote",
            workers=[f"127.0.0.1:{proxy.port}", started[1][1]],
            rounds=1,
            clients_per_round=4,
            eval_every=0,
            root_dir=str(tmp_path),
            experiment_name="c",
            **security,
        )
        lines = []
        result = loop.run(cfg, _marked_task(), print_fn=lines.append)
        assert result.rounds_done == 1 and np.isfinite(result.final_eval["eval/loss"])
    finally:
        proxy.close()
        for proc, _, _ in started:
            proc.terminate()
            proc.wait(timeout=30)
    assert len(proxy.seen) > 10_000  # a share of the round crossed the proxy
    if transport == "tls":
        assert MARKER.tobytes() not in proxy.seen
        assert any(line.startswith("transport: mutual TLS to 2 worker(s) (CA fingerprint ") for line in lines)
    else:  # the same capture in plaintext shows the examples: the check above can fail
        assert MARKER.tobytes() in proxy.seen
        assert any(line.startswith("transport: plaintext to 2 worker(s) (--insecure_workers)") for line in lines)


def _connect_as_nobody(path: str) -> str:
    """Connects to a Unix socket as user 65534 in a forked child: "connected" or the error's name."""
    outcomes = ("connected", "PermissionError", "other")
    child = os.fork()
    if child == 0:  # only system calls here, then _exit
        code = 2
        try:
            os.setgid(65534)
            os.setuid(65534)
            socket.socket(socket.AF_UNIX).connect(path)
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return outcomes[os.waitstatus_to_exitcode(status)]


def _listening_inodes(pid: int) -> dict[int, str]:
    """Listening TCP sockets in `pid`'s network namespace: inode -> local address (hex, as /proc shows)."""
    found = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A":
                    found[int(fields[9])] = fields[1]
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.slow  # a launcher end to end (65 s)
def test_a_cpp_runs_local_worker_is_reachable_from_no_other_host(marker_env, tmp_path):
    env, marker = marker_env
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tffpipe.train",
            "--task=digits",
            "--runtime=cpp",
            "--rounds=500",
            "--eval_every=0",
            f"--root_dir={tmp_path}",
            "--experiment_name=cpp",
        ],
        cwd=REPO_ROOT,
        env=dict(env, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = time.monotonic()
    try:
        lines = []
        for line in launcher.stdout:
            lines.append(line)
            if re.match(r"round +1/", line):
                break
        assert any(line.startswith("runtime: TFF's worker in a private network namespace") for line in lines), lines
        found = worker_processes(marker)
        assert len(found) == 1, (found, processes_with_marker(marker), time.monotonic() - started, lines)
        [(service, cmdline)] = found
        port = int(cmdline.split("--port=")[1].split()[0])
        host_net = os.readlink(f"/proc/{launcher.pid}/ns/net")
        assert os.readlink(f"/proc/{service}/ns/net") != host_net
        with open(f"/proc/{service}/net/dev") as f:
            assert [row.split(":")[0].strip() for row in f.read().splitlines()[2:]] == ["lo"]
        # In the host's namespace, none of the run's processes listens anywhere.
        host_listening = _listening_inodes(launcher.pid)
        run_pids = [pid for pid, _ in processes_with_marker(marker)]
        assert not [i for pid in run_pids for i in _socket_inodes(pid) if i in host_listening]
        # A stranger on this machine dialling the worker's port finds nothing.
        stolen = _unauthenticated_read(f"127.0.0.1:{port}", "/etc/hostname")
        assert stolen.stdout.strip().startswith("refused:"), stolen.stdout + stolen.stderr[-2000:]
        # Another user cannot open the launcher's way in, the Unix socket.
        [(relay, relay_cmdline)] = [p for p in processes_with_marker(marker) if "private_network" in p[1]]
        path = relay_cmdline.split("private_network ", 1)[1].split()[0]
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        if os.geteuid() == 0:
            assert _connect_as_nobody(path) == "PermissionError"
    finally:
        launcher.terminate()
        launcher.wait(timeout=60)
    assert worker_processes(marker) == []


def test_where_no_private_network_can_be_made_the_doctor_and_the_worker_say_so(monkeypatch, marker_env):
    from tffpipe.runtimes import cpp
    from tffpipe.runtimes import processes

    cfg = make_config(runtime="cpp")
    assert list(cpp.RUNTIME.doctor_checks(components.runtime_context(cfg), 0))[0] == (
        "ok",
        "local TFF worker",
        "private network namespace: no other host or user reaches it",
    )
    monkeypatch.setattr(private_network, "_unavailable_reason", ["user namespaces disabled (test)"])
    level, name, text = list(cpp.RUNTIME.doctor_checks(components.runtime_context(cfg), 0))[0]
    assert (level, name) == ("warn", "local TFF worker") and "\n" not in text
    assert text.startswith("TFF's local worker listens on every interface, unauthenticated: user namespaces disabled")
    # TFF's worker then starts as TFF starts it, on its port.
    service = processes.WorkerPopen([processes.binary_path(), "--port=0"], stdin=subprocess.DEVNULL)
    try:
        assert processes.private_socket(0) is None and "private_network" not in " ".join(service.args)
    finally:
        service.kill()
        service.wait()
