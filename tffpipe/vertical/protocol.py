"""The split-model protocol: one training step, and held-out evaluation.

A step on a batch of aligned rows:
  1. every party runs its bottom model on its own rows of the batch;
  2. `sum`: the parties add their embeddings with a pairwise-masked secure
     sum, so the active party receives only the total; `concat`: each
     passive party sends its embedding and the active party concatenates
     them after its own (it sees each one);
  3. the active party runs the top model, computes the loss with its labels,
     updates the top model and sends back the gradient with respect to the
     combination (under `concat`, each party its own slice);
  4. every party updates its bottom model from that gradient.
`Traffic` counts what crosses between organisations, per party and step.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from tffpipe.vertical import masking
from tffpipe.vertical import parties as parties_lib

# Bytes per value on the wire: masked residues are uint64, plain values float32.
_MASKED_BYTES, _FLOAT_BYTES = 8, 4


@dataclasses.dataclass
class Traffic:
    """Bytes each party sent and received in the protocol's messages."""

    sent: dict[str, int]
    received: dict[str, int]

    @classmethod
    def empty(cls, names: Sequence[str]) -> "Traffic":
        return cls({n: 0 for n in names}, {n: 0 for n in names})


def _combine(
    active: parties_lib.ActiveParty,
    passives: Sequence[parties_lib.BottomParty],
    embeddings: list[np.ndarray],
    combine: str,
    traffic: Traffic,
) -> np.ndarray:
    """What the active party receives: the (secure) sum or the concatenation."""
    if combine == "sum":
        secure = masking.EmbeddingSum(len(embeddings))
        masked = [secure.masked(i, e) for i, e in enumerate(embeddings)]
        for party, message in zip(passives, masked[1:]):
            traffic.sent[party.name] += message.size * _MASKED_BYTES
            traffic.received[active.name] += message.size * _MASKED_BYTES
        return secure.unmasked_sum(masked)
    for party, embedding in zip(passives, embeddings[1:]):
        traffic.sent[party.name] += embedding.size * _FLOAT_BYTES
        traffic.received[active.name] += embedding.size * _FLOAT_BYTES
    return np.concatenate(embeddings, axis=1)


def train_step(
    active: parties_lib.ActiveParty,
    passives: Sequence[parties_lib.BottomParty],
    positions: np.ndarray,
    combine: str,
    traffic: Traffic,
    step_key: Sequence[int],
) -> float:
    """One step on the training rows at `positions`; returns the batch loss."""
    everyone = [active, *passives]
    embeddings = [p.embed("train", positions, training=True, step_key=step_key) for p in everyone]
    combined = _combine(active, passives, embeddings, combine, traffic)
    loss, gradient = active.top_step(combined, positions)
    offset = 0
    for party, embedding in zip(everyone, embeddings):
        if combine == "sum":
            own = gradient
        else:
            own = gradient[:, offset : offset + embedding.shape[1]]
            offset += embedding.shape[1]
        if party is not active:
            traffic.sent[active.name] += own.size * _FLOAT_BYTES
            traffic.received[party.name] += own.size * _FLOAT_BYTES
        party.backward(own)
    return loss


def evaluate(
    active: parties_lib.ActiveParty, passives: Sequence[parties_lib.BottomParty], combine: str, batch_size: int
) -> dict[str, float]:
    """Held-out loss and metrics, through the same messages (no noise-free shortcut)."""
    for metric in active.metrics:
        metric.reset_state()
    total, count = 0.0, 0
    rows = active.num_rows("test")
    for start in range(0, rows, batch_size):
        positions = np.arange(start, min(start + batch_size, rows))
        embeddings = [p.embed("test", positions, training=False) for p in [active, *passives]]
        combined = _combine(
            active, passives, embeddings, combine, Traffic.empty([active.name, *(p.name for p in passives)])
        )
        total += active.evaluate_batch(combined, positions) * len(positions)
        count += len(positions)
    figures = {"eval/loss": total / count, "eval/num_examples": float(count)}
    figures.update({f"eval/{m.name}": float(m.result()) for m in active.metrics})
    return figures
