"""Why a TLS connection to a worker failed, in one line, from gRPC's error text.

gRPC reports a failed handshake only as UNAVAILABLE with BoringSSL's reason in
its debug text; a user needs to know which side's certificate is wrong.
"""

import grpc

# An unknown method: a live gRPC server answers it at once with UNIMPLEMENTED, busy or not.
PROBE_METHOD = "/tffpipe.Liveness/Probe"
# (substring of gRPC's text, what it means), first match wins.
_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", "its certificate is not signed by this launcher's CA"),
    ("Peer name", "its certificate does not name the address dialled (issue it with that name, or --hosts)"),
    ("CERTIFICATE_EXPIRED", "it refused this launcher's certificate as expired"),
    ("UNKNOWN_CA", "it refused this launcher's certificate: another CA signed it"),
    ("CERTIFICATE_REQUIRED", "it requires a client certificate"),
    ("BAD_CERTIFICATE", "it refused this launcher's certificate"),
    ("UNSUPPORTED_CERTIFICATE", "it refused this launcher's certificate (not a launcher's)"),
    ("WRONG_VERSION_NUMBER", "it serves plaintext (started with --insecure_workers), not TLS"),
    ("HANDSHAKE_FAILURE", "the TLS handshake failed"),
)


def refusal(channel: grpc.Channel, credentials) -> str | None:
    """One line on why `channel`'s TLS handshake failed, or None if that is not why it is not ready."""
    try:
        channel.unary_unary(PROBE_METHOD)(b"", timeout=2.0)
        return None
    except grpc.RpcError as e:
        text = f"{e.details()} {e.debug_error_string() if hasattr(e, 'debug_error_string') else ''}"
    for needle, meaning in _REASONS:
        if needle in text:
            return f"TLS handshake refused: {meaning}"
    closed = "Socket closed" in text or "Connection reset" in text
    if credentials is None and closed:
        return "it closed a plaintext connection: it may serve TLS (give --tls_dir)"
    if credentials is not None and closed:
        # TLS 1.3: the server checks the client's certificate after the client's side of the handshake.
        return (
            "TLS handshake refused: the worker closed the connection on this launcher's certificate "
            "(another CA's, expired, or not a launcher's)"
        )
    return None
