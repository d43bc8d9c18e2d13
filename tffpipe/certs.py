"""A federation's certificates for mutual TLS between the launcher and its workers.

    python -m tffpipe.certs init DIR
    python -m tffpipe.certs issue DIR NAME --role=worker [--hosts=HOST,...]
    python -m tffpipe.certs issue DIR NAME --role=launcher
    python -m tffpipe.certs show DIR/NAME

`init` makes the federation's certificate authority in `DIR/ca` (its private
key never leaves that folder: keep it on one trusted machine). `issue` makes
`DIR/NAME/` with `ca.crt`, `cert.crt` and `key.pem`: copy that folder to the
machine and pass it as `--tls_dir`. A worker's certificate names the host names
and addresses the launcher dials (NAME and `--hosts`); a launcher's can only
call workers, a worker's can only serve. Keys are ECDSA P-256, made and signed
by the `cryptography` library.
"""

import argparse
import dataclasses
import datetime
import ipaddress
import os
import shutil
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tffpipe.runtimes.tls import CA_CERT, CERT, KEY

ROLES = ("worker", "launcher")
CA_FOLDER = "ca"

_USAGE = {"worker": ExtendedKeyUsageOID.SERVER_AUTH, "launcher": ExtendedKeyUsageOID.CLIENT_AUTH}


class CertError(ValueError):
    """A certificate folder or request that cannot be used (one line)."""


@dataclasses.dataclass(frozen=True)
class Issued:
    """What `issue` wrote."""

    folder: str
    names: tuple[str, ...]
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_folder(folder: str, files: dict[str, bytes]) -> None:
    """Writes `files` into a new folder (0700, keys 0600) all at once: renamed into place when complete."""
    if os.path.exists(folder):
        raise CertError(f"{folder} exists; remove it or pick another name")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tffpipe-certs-", dir=parent)
    try:
        for name, data in files.items():
            path = os.path.join(staging, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def init(directory: str, days: int = 3650, name: str = "tffpipe federation") -> str:
    """Makes the federation's CA in `directory/ca`; returns that folder."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = os.path.join(directory, CA_FOLDER)
    _write_folder(folder, {CA_CERT: cert.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(key)})
    return folder


def _load_ca(directory: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    folder = os.path.join(directory, CA_FOLDER)
    try:
        with open(os.path.join(folder, CA_CERT), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(folder, "ca.key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError as e:
        raise CertError(f"{folder} has no CA (make one with `python -m tffpipe.certs init {directory}`)") from e
    except ValueError as e:
        raise CertError(f"{folder}: not a CA made by `tffpipe.certs init` ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{folder}: not a CA made by `tffpipe.certs init` (its key is not an elliptic-curve key)")
    return cert, key


def _subject_alternative_names(names: list[str]) -> list[x509.GeneralName]:
    found: list[x509.GeneralName] = []
    for name in names:
        try:
            found.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            found.append(x509.DNSName(name))
    return found


def issue(
    directory: str,
    name: str,
    role: str,
    hosts: list[str] | None = None,
    days: int = 825,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """Signs a certificate for `name` with the CA in `directory`; writes `directory/name/`.

    Args:
      directory: the folder `init` made its CA in.
      name: the machine's name (a worker's: a host name or address the launcher dials).
      role: "worker" (serves) or "launcher" (calls workers).
      hosts: more host names or addresses a worker is dialled at.
      days: how long the certificate is valid.
      not_before: when it becomes valid (default: now).

    Raises:
      CertError: a bad name or role, no CA, or the folder exists.
    """
    if role not in ROLES:
        raise CertError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if not name or name == CA_FOLDER or os.sep in name or name.startswith("."):
        raise CertError(f"{name!r} cannot name a certificate folder")
    if days < 1:
        raise CertError(f"--days must be at least 1, got {days}")
    ca_cert, ca_key = _load_ca(directory)
    names = [name, *(h for h in (hosts or []) if h and h != name)] if role == "worker" else [name]
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - datetime.timedelta(minutes=5)
    not_after = start + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_USAGE[role]]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(names)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = os.path.join(directory, name)
    _write_folder(
        folder,
        {
            CA_CERT: ca_cert.public_bytes(serialization.Encoding.PEM),
            CERT: cert.public_bytes(serialization.Encoding.PEM),
            KEY: _pem_key(key),
        },
    )
    return Issued(folder, tuple(names), not_after)


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line (subcommands' parsers are of this class too)."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m tffpipe.certs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("init", help="make the federation's CA in DIR/ca")
    made.add_argument("directory", metavar="DIR")
    made.add_argument("--days", type=int, default=3650, help="how long the CA is valid (default 3650)")
    made.add_argument("--name", default="tffpipe federation", help="the CA's common name")
    issued = commands.add_parser("issue", help="make DIR/NAME/ (ca.crt, cert.crt, key.pem) for one machine")
    issued.add_argument("directory", metavar="DIR")
    issued.add_argument(
        "name", metavar="NAME", help="the machine's name; a worker's: the host name or address the launcher dials"
    )
    issued.add_argument("--role", required=True, choices=ROLES)
    issued.add_argument("--hosts", default="", help="a worker's other host names or addresses, comma-separated")
    issued.add_argument("--days", type=int, default=825, help="how long the certificate is valid (default 825)")
    shown = commands.add_parser("show", help="what a --tls_dir holds, and whether it can be used now")
    shown.add_argument("tls_dir", metavar="TLS_DIR")
    shown.add_argument("--role", choices=ROLES, default=None)
    return parser


def main(argv: list[str]) -> int:
    """The command line; returns the exit status."""
    args = _parser().parse_args(argv)
    from tffpipe.runtimes import tls

    try:
        if args.command == "init":
            folder = init(args.directory, args.days, args.name)
            print(
                f"CA made in {folder} (fingerprint {tls.fingerprint(os.path.join(folder, CA_CERT))}); "
                f"keep {os.path.join(folder, 'ca.key')} on this machine only"
            )
        elif args.command == "issue":
            hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
            done = issue(args.directory, args.name, args.role, hosts, args.days)
            print(
                f"{args.role} certificate for {', '.join(done.names)} in {done.folder}, valid until "
                f"{done.not_after:%Y-%m-%d}; copy that folder to the machine and pass --tls_dir={done.folder}"
            )
        else:
            print(tls.load(args.tls_dir, args.role).describe())
    except (CertError, tls.TlsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
