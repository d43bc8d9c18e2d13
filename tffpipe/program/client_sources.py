"""Clients' datasets as recipes: built here, or on another machine from the same task factory.

A round hands its runtime a `ClientDatasets`: a sequence that builds each
client's dataset when read, so the in-process runtime trains on it as on a
list, while a runtime that runs clients elsewhere (`--runtime=ray`) sends
only its `source` (once) and `keys` (client ids and seeds) and lets each
machine build the datasets itself from the task factory, with `--data_dir`
as that machine sees it. The examples never cross the network.
"""

import dataclasses
import threading
from typing import Any
from collections.abc import Sequence

from tffpipe import config as config_lib
from tffpipe.config import components as config_components
from tffpipe.tasks import ClientSpec

_built: dict[Any, Any] = {}
_build_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class TaskRecipe:
    """What builds the run's task: its factory (name or path), options, seed and data folder."""

    name: str
    options: tuple[tuple[str, Any], ...]
    seed: int
    data_dir: str | None

    @classmethod
    def of(cls, cfg: config_lib.RunConfig) -> "TaskRecipe":
        return cls(cfg.task.name, tuple(sorted(cfg.task.options.items())), cfg.schedule.seed, cfg.task.data_dir)

    def build(self) -> Any:
        """The task, built once per process."""
        with _build_lock:
            if self not in _built:
                from tffpipe import tasks

                _built[self] = tasks.create_task(self.name, dict(self.options), seed=self.seed, data_dir=self.data_dir)
            return _built[self]


def task_fingerprint(task: Any) -> tuple:
    """What a rebuilt task must share with the launcher's: name, client counts, element spec."""
    return (task.name, len(task.train_data.client_ids), len(task.eval_data.client_ids), repr(task.input_spec))


@dataclasses.dataclass(frozen=True)
class TrainSource:
    """Training datasets: key (client id, seed) -> the client's dataset for a round.

    `attack` is the run's settings when an attack simulation changes
    clients' data (poisoned examples, attacker tokens); the simulation is
    rebuilt from them, with the same attackers (chosen by `--seed`).
    """

    recipe: TaskRecipe
    spec: ClientSpec
    attack: config_lib.RunConfig | None = None

    def build(self, key: tuple[str, int], task: Any = None, simulation: Any = None) -> Any:
        client_id, seed = key
        task = task if task is not None else self.recipe.build()
        dataset = task.client_dataset(client_id, self.spec, seed=seed)
        if self.attack is None:
            return dataset
        if simulation is None:
            simulation = _simulation(self.attack, self.recipe)
        return simulation.client_data(client_id, dataset, seed)


@dataclasses.dataclass(frozen=True)
class EvalSource:
    """Evaluation datasets: key client id -> the client's batched held-out dataset."""

    recipe: TaskRecipe
    batch_size: int

    def build(self, key: str, task: Any = None, simulation: Any = None) -> Any:
        del simulation
        task = task if task is not None else self.recipe.build()
        return task.eval_dataset(key, self.batch_size)


def _simulation(cfg: config_lib.RunConfig, recipe: TaskRecipe) -> Any:
    with _build_lock:
        key = ("simulation", repr(cfg))
        if key in _built:
            return _built[key]
    from tffpipe.attacks import simulation as attack_simulation

    built = attack_simulation.Simulation(cfg.attack.name, config_components.attack_context(cfg), recipe.build())
    with _build_lock:
        return _built.setdefault(key, built)


def for_process(process: Any, datasets: Sequence[Any]) -> Sequence[Any]:
    """`datasets` as `process.next` takes them: recipes for runtimes that accept
    them (`accepts_client_sources`), else a list (TFF's contexts rebuild
    sequences of their own type)."""
    return datasets if getattr(process, "accepts_client_sources", False) else list(datasets)


class ClientDatasets(Sequence):
    """Clients' datasets, each built from `source` and its key when read.

    Args:
      source: a `TrainSource` or `EvalSource`.
      keys: one key per client, in the round's order.
      task: the launcher's task (reading here builds with it, no rebuild).
      simulation: the launcher's attack simulation, if any.
    """

    def __init__(self, source: Any, keys: Sequence[Any], task: Any, simulation: Any = None):
        self.source = source
        self.keys = list(keys)
        self._task = task
        self._simulation = simulation
        self._cache: dict[int, Any] = {}

    @property
    def task(self) -> Any:
        """The launcher's task."""
        return self._task

    def __len__(self) -> int:
        return len(self.keys)

    def traced_builder(self) -> tuple[Any, list[str], list[int]] | None:
        """(client id, seed -> dataset as a traced function; ids; seeds), or None.

        Lets a runtime build a group's datasets inside its own TensorFlow
        call instead of one Python call per client (about 1.5 ms each). Only
        for training datasets of a task whose dataset function traces, with
        no attack simulation changing them.
        """
        if not isinstance(self.source, TrainSource) or self.source.attack is not None:
            return None
        task = self._task if self._task is not None else self.source.recipe.build()
        function = getattr(task, "client_dataset_function", None)
        build = function(self.source.spec) if function is not None else None
        if build is None:
            return None
        return build, [cid for cid, _ in self.keys], [seed for _, seed in self.keys]

    def __getitem__(self, index):
        if isinstance(index, slice):
            part = ClientDatasets(self.source, self.keys[index], self._task, self._simulation)
            positions = range(len(self.keys))[index]
            part._cache = {k: self._cache[i] for k, i in enumerate(positions) if i in self._cache}
            return part
        if index not in self._cache:
            self._cache[index] = self.source.build(self.keys[index], self._task, self._simulation)
        return self._cache[index]
