"""Non-IID partitioning of centralized arrays into federated client data."""

from typing import Mapping, Sequence

import numpy as np
import tensorflow_federated as tff


def dirichlet_label_skew(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    *,
    seed: int,
    min_examples: int = 5,
    max_attempts: int = 20,
) -> list[np.ndarray]:
    """Splits example indices across clients with Dirichlet label skew.

    For every class, the class's examples are divided among the clients in
    proportions drawn from Dirichlet(alpha, ..., alpha) (Hsu et al. 2019). Small
    alpha gives each client few classes; large alpha approaches IID. The draw is
    repeated until every client holds at least `min_examples` examples; if none
    of `max_attempts` draws does (small alpha, many clients), the last draw is
    topped up by moving random examples from the largest clients to the
    smallest, which keeps the skew of all but the smallest clients.

    Args:
      labels: integer class label of each example, shape [num_examples].
      num_clients: number of clients to create.
      alpha: Dirichlet concentration, > 0.
      seed: seeds the draw; the same seed gives the same partition.
      min_examples: the smallest client size allowed.
      max_attempts: draws to try before topping up.

    Returns:
      One sorted index array per client; together they cover every example once.

    Raises:
      ValueError: on bad arguments, including too few examples for
        `num_clients * min_examples`.
    """
    labels = np.asarray(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if num_clients * min_examples > len(labels):
        raise ValueError(
            f"{len(labels)} examples cannot give {num_clients} clients "
            f"{min_examples} examples each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        clients = [np.concatenate(p) for p in parts]
        if min(len(c) for c in clients) >= min_examples:
            break
    else:
        clients = _top_up(clients, min_examples, rng)
    return [np.sort(c) for c in clients]


def _top_up(clients: list[np.ndarray], min_examples: int, rng) -> list[np.ndarray]:
    """Moves random examples from the largest clients until all have enough."""
    clients = [list(c) for c in clients]
    sizes = np.array([len(c) for c in clients])
    while sizes.min() < min_examples:
        donor, recipient = int(sizes.argmax()), int(sizes.argmin())
        moved = clients[donor].pop(int(rng.integers(sizes[donor])))
        clients[recipient].append(moved)
        sizes[donor] -= 1
        sizes[recipient] += 1
    return [np.array(c, dtype=np.int64) for c in clients]


def to_client_data(
    arrays: Mapping[str, np.ndarray],
    client_indices: Sequence[np.ndarray],
    client_ids: Sequence[str],
) -> tff.simulation.datasets.ClientData:
    """Builds in-memory `ClientData` from per-client example indices.

    Args:
      arrays: feature name -> array whose first axis indexes examples.
      client_indices: one index array per client.
      client_ids: one id per client, same order as `client_indices`.

    Returns:
      A `ClientData` whose datasets yield dicts of the named features.
    """
    if len(client_indices) != len(client_ids):
        raise ValueError("client_indices and client_ids differ in length")
    return tff.simulation.datasets.TestClientData(
        {
            cid: {name: values[idx] for name, values in arrays.items()}
            for cid, idx in zip(client_ids, client_indices)
        }
    )
