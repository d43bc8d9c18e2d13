"""A digits task whose Ray actor dies the first time it builds one client's data (tests/test_ray.py).

Set TFFPIPE_TEST_KILL_MARKER (a file path) in the environment the Ray
cluster starts with, and write a client id to MARKER.client: inside a Ray
actor, the first read of that client's examples creates MARKER and ends the
actor's process at once, as a crashed node would. Anywhere else (the
launcher, the in-process runtime) the task is digits unchanged.
"""

import dataclasses
import os
import pathlib

import tensorflow as tf
import tensorflow_federated as tff

from tffpipe_tasks import digits


def _alive(client_id) -> bool:
    marker = os.environ.get("TFFPIPE_TEST_KILL_MARKER")
    if not marker or os.path.exists(marker) or not os.path.exists(marker + ".client"):
        return True
    with open(marker + ".client") as f:
        chosen = f.read().strip()
    if client_id.numpy().decode() == chosen and "ray::" in pathlib.Path("/proc/self/cmdline").read_bytes().decode(
        errors="replace"
    ):
        open(marker, "w").close()
        os._exit(1)  # the actor's process ends mid-round, as on a crashed node
    return True


def _dying(data):
    """The digits clients; reading the chosen client's examples may end the process (above)."""

    def dataset_fn(client_id):
        dataset = data.serializable_dataset_fn(client_id)
        return dataset.filter(lambda *_: tf.reshape(tf.py_function(_alive, [client_id], tf.bool), []))

    return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(data.client_ids, dataset_fn)


def create_task(*, num_clients: int = 50, seed: int = 0):
    task = digits.create_task(num_clients=num_clients, seed=seed)
    return dataclasses.replace(task, name="digits", train_data=_dying(task.train_data))
