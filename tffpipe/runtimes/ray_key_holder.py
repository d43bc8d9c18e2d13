"""`--secure_protocol=ckks` on `--runtime=ray`: the CKKS key holder as an actor of its own.

The actor runs on the launcher's node (it reads and writes the keys in the
run folder there), reserves no CPU and imports TenSEAL but not TensorFlow.
The launcher and the client actors get only the public context; the
launcher hands the actor the summed ciphertext and gets the plain sum back.
"""

from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from tffpipe import errors
from tffpipe.aggregation.protocols import ckks


class KeyHolderActor:
    """A `ckks_keys.KeyHolder` in its own Ray worker process."""

    def __init__(self, key_dir: str, params: ckks.Parameters):
        from tffpipe.aggregation.protocols import ckks_keys

        self._holder = ckks_keys.KeyHolder.load_or_create(key_dir, params)

    def public_context(self) -> bytes:
        return self._holder.public_context()

    def reveal(self, summed: list[bytes], moduli: list[int], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        return self._holder.reveal(summed, moduli, shapes)

    def pid(self) -> int:
        import os

        return os.getpid()


class HolderHandle:
    """The launcher's handle on the key-holder actor, with `KeyHolder`'s methods."""

    def __init__(self, actor: Any):
        self.actor = actor

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, errors.UserError):
                raise type(cause)(str(cause)) from None
            raise
        except ray.exceptions.RayActorError as e:
            raise errors.UserError(
                "--runtime=ray: the CKKS key-holder actor was lost; rerun the same command to resume from "
                "the last checkpoint (the keys stay in the run folder)"
            ) from e

    def public_context(self) -> bytes:
        return self._get(self.actor.public_context.remote())

    def reveal(
        self, summed: Sequence[bytes], moduli: Sequence[int], shapes: Sequence[tuple[int, ...]]
    ) -> list[np.ndarray]:
        return self._get(self.actor.reveal.remote(list(summed), list(moduli), list(shapes)))


def start(key_dir: str, params: ckks.Parameters) -> tuple[HolderHandle, Callable[[], None]]:
    """The key-holder actor on this node, and what stops it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = (
        ray.remote(KeyHolderActor)
        .options(
            num_cpus=0,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        )
        .remote(key_dir, params)
    )
    return HolderHandle(actor), lambda: ray.kill(actor)
