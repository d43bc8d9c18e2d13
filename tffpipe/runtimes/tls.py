"""Mutual TLS credentials of a launcher or a worker, from a folder `python -m tffpipe.certs issue` made.

Checked before any connection, so a wrong folder is one line at the start
rather than a handshake failure later: the files are there, the key is the
certificate's, the federation's CA signed it, it is valid now, and it is for
the role it is used in. gRPC (BoringSSL) does the TLS itself.
"""

import dataclasses
import datetime
import os
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

CA_CERT, CERT, KEY = "ca.crt", "cert.crt", "key.pem"
_USAGE = {"worker": ExtendedKeyUsageOID.SERVER_AUTH, "launcher": ExtendedKeyUsageOID.CLIENT_AUTH}


class TlsError(ValueError):
    """A --tls_dir that cannot be used (one line)."""


def fingerprint(ca_path: str) -> str:
    """The first 16 hex digits of the SHA-256 of a PEM certificate: what the run prints of its CA."""
    with open(ca_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


@dataclasses.dataclass(frozen=True)
class Credentials:
    """One machine's certificate, key and the federation's CA (PEM bytes)."""

    folder: str
    ca: bytes
    cert: bytes
    key: bytes
    name: str
    ca_fingerprint: str
    not_after: datetime.datetime

    def describe(self) -> str:
        """One line: whose certificate, until when, which CA."""
        return (
            f"{self.folder}: certificate for {self.name}, valid until {self.not_after:%Y-%m-%d %H:%M} UTC, "
            f"signed by CA {self.ca_fingerprint}"
        )

    def server_credentials(self):
        """gRPC server credentials that accept only clients the CA signed."""
        import grpc

        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)

    def channel_credentials(self):
        """gRPC channel credentials: this certificate, and only servers the CA signed."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read(folder: str, name: str) -> bytes:
    path = os.path.join(folder, name)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise TlsError(
            f"--tls_dir={folder} has no {name} (make the folder with `python -m tffpipe.certs issue`)"
        ) from e
    except OSError as e:
        raise TlsError(f"--tls_dir={folder}: cannot read {name} ({e.strerror})") from e


def load(folder: str, role: str | None = None, now: datetime.datetime | None = None) -> Credentials:
    """Reads and checks `folder` for `role` ("worker", "launcher", or None for either).

    Raises:
      TlsError: a file is missing or unreadable, the key is not the
        certificate's, the CA did not sign it, it is not valid now, or it is
        for the other role.
    """
    if not os.path.isdir(folder):
        raise TlsError(f"--tls_dir={folder} is not a folder")
    ca_pem, cert_pem, key_pem = (_read(folder, n) for n in (CA_CERT, CERT, KEY))
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as e:
        raise TlsError(f"--tls_dir={folder}: not PEM certificates and key ({e})") from e
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TlsError(f"--tls_dir={folder}: {KEY} is not the key of {CERT}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise TlsError(f"--tls_dir={folder}: {CERT} is not signed by the CA in {CA_CERT}") from e
    now = now or datetime.datetime.now(datetime.UTC)
    name = cert.subject.rfc4514_string()
    if now > cert.not_valid_after_utc:
        raise TlsError(
            f"--tls_dir={folder}: the certificate of {name} expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; issue a new one"
        )
    if now < cert.not_valid_before_utc:
        raise TlsError(
            f"--tls_dir={folder}: the certificate of {name} is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this machine's clock)"
        )
    if role is not None:
        usages: Iterable[x509.ObjectIdentifier]
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = []
        if _USAGE[role] not in usages:
            other = "launcher" if role == "worker" else "worker"
            raise TlsError(
                f"--tls_dir={folder}: the certificate of {name} is a {other}'s, not a {role}'s "
                f"(issue one with --role={role})"
            )
    return Credentials(
        folder, ca_pem, cert_pem, key_pem, name, ca.fingerprint(hashes.SHA256()).hex()[:16], cert.not_valid_after_utc
    )
