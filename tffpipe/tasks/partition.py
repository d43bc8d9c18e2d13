"""Partitioning centralized arrays into federated clients: IID, label skew
(Dirichlet or shards), quantity skew."""

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
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
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    _check_sizes(len(labels), num_clients, min_examples)
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
    members = [list(c) for c in clients]
    sizes = np.array([len(c) for c in members])
    while sizes.min() < min_examples:
        donor, recipient = int(sizes.argmax()), int(sizes.argmin())
        moved = members[donor].pop(int(rng.integers(sizes[donor])))
        members[recipient].append(moved)
        sizes[donor] -= 1
        sizes[recipient] += 1
    return [np.array(c, dtype=np.int64) for c in members]


def iid(num_examples: int, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """Splits example indices uniformly at random into near-equal clients.

    Returns:
      One sorted index array per client; together they cover every example once.
    """
    _check_sizes(num_examples, num_clients, 1)
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def label_shards(labels: np.ndarray, num_clients: int, *, seed: int, shards_per_client: int = 2) -> list[np.ndarray]:
    """McMahan et al. (2017)'s pathological non-IID split into label shards.

    Examples are sorted by label and cut into `num_clients * shards_per_client`
    equal shards; each client gets `shards_per_client` random shards, so it
    sees at most that many labels.

    Returns:
      One sorted index array per client; together they cover every example once.
    """
    labels = np.asarray(labels)
    num_shards = num_clients * shards_per_client
    _check_sizes(len(labels), num_shards, 1, what="shards")
    rng = np.random.default_rng(seed)
    # Random order within a label, so the shards of one label differ by seed.
    order = np.lexsort((rng.random(len(labels)), labels))
    shards = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in assignment]


def quantity_skew(
    num_examples: int, num_clients: int, alpha: float, *, seed: int, min_examples: int = 5
) -> list[np.ndarray]:
    """Clients of very different sizes with the same label distribution.

    Client sizes follow Dirichlet(alpha) proportions (Li et al. 2022's
    quantity skew; smaller alpha, more unequal), with at least `min_examples`
    each; examples are assigned at random, so labels stay IID.

    Returns:
      One sorted index array per client; together they cover every example once.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    _check_sizes(num_examples, num_clients, min_examples)
    rng = np.random.default_rng(seed)
    spare = num_examples - num_clients * min_examples
    sizes = min_examples + rng.multinomial(spare, rng.dirichlet(np.full(num_clients, alpha)))
    order = rng.permutation(num_examples)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def _check_sizes(num_examples: int, parts: int, min_examples: int, what="clients") -> None:
    if parts < 1:
        raise ValueError(f"num_clients must be at least 1, got {parts}")
    if parts * min_examples > num_examples:
        raise ValueError(
            f"{num_examples} examples cannot give {parts} {what} "
            f"{min_examples} example{'s' if min_examples > 1 else ''} each"
        )


def to_client_data(
    arrays: Mapping[str, np.ndarray],
    client_indices: Sequence[np.ndarray],
    client_ids: Sequence[str],
) -> tff.simulation.datasets.ClientData:
    """Builds in-memory `ClientData` from per-client example indices.

    It is TFF's `ClientData.from_clients_and_tf_fn` with a dataset function
    that gathers only the requested client's rows: a dataset built from a
    client id tensor (see `Task.client_dataset`) holds that client's examples
    alone, unlike `tff.simulation.datasets.TestClientData`, whose traceable
    function bakes every client's data into each dataset it makes.

    Args:
      arrays: feature name -> array whose first axis indexes examples.
      client_indices: one index array per client.
      client_ids: one id per client, same order as `client_indices`.

    Returns:
      A `ClientData` whose datasets yield dicts of the named features.
    """
    if len(client_indices) != len(client_ids):
        raise ValueError("client_indices and client_ids differ in length")
    values = {name: np.asarray(array) for name, array in arrays.items()}
    ids = tf.constant(list(client_ids))
    rows_of = tf.RaggedTensor.from_row_lengths(
        np.concatenate([np.asarray(i, np.int64) for i in client_indices]),
        [len(i) for i in client_indices],
    )

    def dataset_fn(client_id: tf.Tensor) -> tf.data.Dataset:
        rows = rows_of[tf.where(tf.equal(ids, client_id))[0, 0]]
        return tf.data.Dataset.from_tensor_slices({name: tf.gather(array, rows) for name, array in values.items()})

    return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(list(client_ids), dataset_fn)
