"""The only network-facing part of a remote worker: a gRPC server that checks callers, then forwards.

TFF's `worker_binary` serves plaintext gRPC to anyone (`private_network`);
this front serves TLS that requires a client certificate signed by the
federation's CA (gRPC's own `ssl_server_credentials`), or plaintext when the
operator asked for it, and passes every call through unchanged, as bytes, to
the private worker. Deadlines, cancellation and status codes pass through too,
so the launcher's failover and probing work as they do against the worker
itself. gRPC offers no proxy of its own; a generic handler is the documented
way to serve methods one does not declare.
"""

import asyncio
import threading

import grpc
from grpc import aio

# As TFF's own channels: weights of large models exceed gRPC's 4 MB default.
MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# A second worker on the same port must fail, not share it (gRPC's default is SO_REUSEPORT).
_SERVER_OPTIONS = [*_OPTIONS, ("grpc.so_reuseport", 0)]
_FORWARDED_METADATA_SKIP = ("grpc-", ":", "user-agent", "content-type", "te")


class _Forward(grpc.GenericRpcHandler):
    """Every method, streaming or not, as a bidirectional stream of raw bytes to `backend`."""

    def __init__(self, backend: aio.Channel):
        self._backend = backend

    def service(self, handler_call_details):
        upstream = self._backend.stream_stream(handler_call_details.method)

        async def forward(requests, context):
            metadata = [
                (k, v) for k, v in (context.invocation_metadata() or ()) if not k.startswith(_FORWARDED_METADATA_SKIP)
            ]
            call = upstream(requests, timeout=context.time_remaining(), metadata=metadata)
            try:
                async for response in call:
                    yield response
            except aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "")

        return grpc.stream_stream_rpc_method_handler(forward)


class Front:
    """Serves `address` (HOST:PORT), forwarding to `backend` (a gRPC target) on a thread of its own."""

    def __init__(self, address: str, backend: str, credentials=None):
        self._address, self._backend_target, self._credentials = address, backend, credentials
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tffpipe-worker-front", daemon=True)

    def start(self) -> None:
        """Returns once it serves.

        Raises:
          OSError: the address cannot be bound (in use, or not this machine's).
        """
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise OSError(f"cannot serve on {self._address}: {self._error}")

    def stop(self) -> None:
        """Stops serving (calls in flight are cancelled) and waits."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        backend = aio.insecure_channel(self._backend_target, options=_OPTIONS)
        server = aio.server(options=_SERVER_OPTIONS)
        server.add_generic_rpc_handlers((_Forward(backend),))
        try:
            if self._credentials is None:
                bound = server.add_insecure_port(self._address)
            else:
                bound = server.add_secure_port(self._address, self._credentials)
            if not bound:
                raise OSError("nothing bound")
            await server.start()
        except (RuntimeError, OSError) as e:
            self._error = e
            self._started.set()
            await backend.close()
            return
        self._started.set()
        await self._stop.wait()
        await server.stop(grace=None)
        await backend.close()
