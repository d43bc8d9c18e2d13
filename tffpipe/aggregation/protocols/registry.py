"""The secure-sum protocols (`--secure_protocol`).

Adding one: a module in this folder with `build(settings, key_dir,
holder_factory)` returning a `base.SecureProtocol`, `upload_bytes(settings)`
and, if its settings can be refused, `check(settings)` (see `masking.py`,
`ckks.py`), and its name here.
"""

import importlib
from typing import Any
from collections.abc import Callable

from tffpipe.aggregation.protocols import base

PROTOCOLS = ("masking", "ckks")
# What TFF's own runtimes (cpp, remote) stand in for: they execute secure
# sums themselves, exactly, as masking's result would be.
TFF_STANDS_IN_FOR = ("masking",)


def needs_our_engine(name: str) -> bool:
    """Whether only the in-process engine (and its Ray actors) can run protocol `name`."""
    return name not in TFF_STANDS_IN_FOR


def _module_and_settings(secure: Any) -> tuple[Any, Any]:
    """The module of the protocol the `secure` layer's settings name, and that protocol's own settings group."""
    if secure.protocol not in PROTOCOLS:
        raise ValueError(f"unknown secure protocol {secure.protocol!r}")
    module = importlib.import_module(f"tffpipe.aggregation.protocols.{secure.protocol}")
    return module, getattr(secure, secure.protocol, None)


def check(secure: Any) -> None:
    """Refuses the chosen protocol's own settings if they cannot work (`ConfigError`; a module's `check`)."""
    module, settings = _module_and_settings(secure)
    if hasattr(module, "check"):
        module.check(settings)


def upload_bytes(secure: Any) -> Callable:
    """(elements, bit widths) of a client's secure values -> the bytes it uploads under the protocol of `secure` (the secure layer's settings)."""
    module, settings = _module_and_settings(secure)
    return module.upload_bytes(settings)


def for_run(secure: Any, run_dir: str, holder_factory: Callable | None = None) -> Callable[[], base.SecureProtocol]:
    """Makes the run's protocol (`--secure_protocol` in `secure`, the secure layer's settings), its keys kept in `run_dir`'s `keys/`."""
    from tffpipe.program import outputs

    module, settings = _module_and_settings(secure)
    key_dir = outputs.RunPaths(run_dir).keys
    return lambda: module.build(settings, key_dir, holder_factory)
