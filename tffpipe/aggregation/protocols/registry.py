"""The secure-sum protocols (`--secure_protocol`).

Adding one: a module in this folder with `build(settings, key_dir,
holder_factory)` returning a `base.SecureProtocol` and `upload_bytes(settings)`
(see `masking.py`), and its name here.
"""

import importlib
from typing import Any, Callable

from tffpipe.aggregation.protocols import base

PROTOCOLS = ("masking", "ckks")
# What TFF's own runtimes (cpp, remote) stand in for: they execute secure
# sums themselves, exactly, as masking's result would be.
TFF_STANDS_IN_FOR = ("masking",)


def needs_our_engine(name: str) -> bool:
    """Whether only the in-process engine (and its Ray actors) can run protocol `name`."""
    return name not in TFF_STANDS_IN_FOR


def build(name: str, settings: Any, key_dir: str, holder_factory: Callable | None = None) -> base.SecureProtocol:
    """The protocol `name` with its own settings and the run's key folder."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown secure protocol {name!r}")
    return importlib.import_module(f"tffpipe.aggregation.protocols.{name}").build(settings, key_dir, holder_factory)


def upload_bytes(cfg: Any) -> Callable:
    """(elements, bit widths) of a client's secure values -> the bytes it uploads under the run's protocol."""
    secure = cfg.aggregation.secure
    module = importlib.import_module(f"tffpipe.aggregation.protocols.{secure.protocol}")
    return module.upload_bytes(getattr(secure, secure.protocol, None))


def for_run(cfg: Any, holder_factory: Callable | None = None) -> Callable[[], base.SecureProtocol]:
    """Makes the run's protocol (`--secure_protocol`), its keys kept in the run folder's `keys/`."""
    from tffpipe.program import outputs  # pylint: disable=g-import-not-at-top

    secure = cfg.aggregation.secure
    key_dir = outputs.RunPaths(cfg.output.run_dir).keys
    return lambda: build(secure.protocol, getattr(secure, secure.protocol, None), key_dir, holder_factory)
