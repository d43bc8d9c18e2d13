"""One MapReduceForm's parts, imported into this process, with the client half that runs its work."""

import dataclasses
from typing import Any

import numpy as np
from tffpipe.compat import forms

from tffpipe.runtimes import client_half
from tffpipe.runtimes import tf_parts

_SECURE_KINDS = (
    # (MapReduceForm part giving the parameter, work output index, kind)
    ("secure_sum_bitwidth", forms.WORK_SECAGG_BITWIDTH_INDEX, "bitwidth"),
    ("secure_sum_max_input", forms.WORK_SECAGG_MAX_INPUT_INDEX, "max_input"),
    ("secure_modular_sum_modulus", forms.WORK_SECAGG_MODULUS_INDEX, "modular"),
)


@dataclasses.dataclass
class RoundParts:
    """A round's server parts (imported), its client half and its secure sums.

    Attributes:
      next_type: the type signature of the process's `next`.
      prepare, merge, report, update: the MapReduceForm's server parts.
      clients: runs `work` and `accumulate` for a round's clients.
      secure: per kind of secure sum, (kind, how many values, their
        parameters); constants of the computation, read once.
    """

    next_type: Any
    prepare: tf_parts.ImportedComputation
    merge: tf_parts.ImportedComputation
    report: tf_parts.ImportedComputation
    update: tf_parts.ImportedComputation
    clients: Any
    secure: list[tuple[str, int, list[int]]]

    @classmethod
    def of(cls, mrf: forms.MapReduceForm, next_type: Any, clients: Any, what: str) -> "RoundParts":
        """`mrf`'s parts imported, with `clients` running its work."""
        work_result = mrf.work.type_signature.result
        secure = []
        for part, index, kind in _SECURE_KINDS:
            count = tf_parts.num_leaves(work_result[index])
            if not count:
                continue
            params = [int(np.asarray(p)) for p in client_half.import_part(getattr(mrf, part), what)()]
            if len(params) == 1 and count > 1:
                params = params * count
            secure.append((kind, count, params))
        return cls(
            next_type,
            client_half.import_part(mrf.prepare, what),
            client_half.import_part(mrf.merge, what),
            client_half.import_part(mrf.report, what),
            client_half.import_part(mrf.update, what),
            clients,
            secure,
        )
