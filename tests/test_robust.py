"""`--robust` and `--robust_norm_bound` as aggregation layers: the stack, its figures, refusals, runs."""

import collections
import csv
import math
import os

import numpy as np
import pytest
import tensorflow_federated as tff

from conftest import make_config
from tffpipe import errors
from tffpipe.program import assembly as aggregation
from tffpipe.program import loop

from tffpipe_tasks import digits

CLIENT_IDS = [f"c{i}" for i in range(40)]
VALUE_TYPE = tff.StructWithPythonType(
    [("w", tff.TensorType(np.float32, [3, 2])), ("b", tff.TensorType(np.float32, [4]))],
    collections.OrderedDict,
)


def _process(**flags):
    factory, stack = aggregation.build_aggregator(make_config(rounds=5, zeroing=False, **flags), CLIENT_IDS)
    assert not stack.weighted  # robust rules weigh every client alike
    return factory.create(VALUE_TYPE), stack


def _client_values(n, seed=0, attackers=0):
    rng = np.random.default_rng(seed)
    values = []
    for i in range(n):
        shift = -100.0 if i < attackers else 0.0
        values.append(
            collections.OrderedDict(
                w=(rng.normal(size=(3, 2)) + shift).astype(np.float32),
                b=(rng.normal(size=4) + shift).astype(np.float32),
            )
        )
    return values


def _rows(values):
    return np.stack([np.concatenate([v["w"].ravel(), v["b"]]) for v in values])


def _as_row(result):
    return np.concatenate([np.asarray(result["w"]).ravel(), np.asarray(result["b"])])


def test_median_of_structured_updates_is_numpys_per_coordinate():
    process, stack = _process(robust="median", clients_per_round=5)
    assert stack.summary == "robust"
    values = _client_values(5)
    output = process.next(process.initialize(), values)
    np.testing.assert_allclose(_as_row(output.result), np.median(_rows(values), axis=0), atol=1e-6)
    assert output.measurements["robust"]["clients"] == 5


def test_multi_krum_in_the_stack_leaves_the_attackers_out():
    process, _ = _process(robust="multi_krum", robust_num_byzantine=2, clients_per_round=7)
    values = _client_values(7, attackers=2)
    output = process.next(process.initialize(), values)
    np.testing.assert_allclose(_as_row(output.result), _rows(values[2:]).mean(axis=0), atol=1e-5)
    assert (output.measurements["robust"]["selected"], output.measurements["robust"]["rejected"]) == (5, 2)


def test_norm_bound_clips_each_update_before_the_mean():
    process, stack = _process(robust_norm_bound=1.0, clients_per_round=3, client_weighting="uniform")
    assert stack.summary == "norm bound -> mean"
    values = _client_values(3)
    values[0] = collections.OrderedDict(w=np.full((3, 2), 10.0, np.float32), b=np.zeros(4, np.float32))
    output = process.next(process.initialize(), values)
    rows = _rows(values)
    clipped = rows * np.minimum(1.0, 1.0 / np.linalg.norm(rows, axis=1))[:, None]
    np.testing.assert_allclose(_as_row(output.result), clipped.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            dict(robust="median", secure_aggregation=True),
            "--robust=median cannot run under --secure_aggregation: the rule reads each client's update, which secure aggregation exists to hide from the server",
        ),
        (
            dict(robust="krum", dp="fixed", dp_noise_multiplier=1.0),
            "--robust=krum cannot run under --dp=fixed: the DP mechanisms calibrate noise to a clipped sum, which a robust rule does not compute, so no epsilon could be claimed",
        ),
        (
            dict(robust="median", compression="uniform_quantization"),
            "--robust=median cannot run under --compression: it quantises a sum, and there is none",
        ),
        (
            dict(robust="median", client_weighting="num_examples"),
            "--robust=median needs --client_weighting=uniform: robust rules treat every client's update alike",
        ),
        (
            dict(robust="bulyan", robust_num_byzantine=2, clients_per_round=10),
            "--robust=bulyan with --robust_num_byzantine=2 needs at least 11 clients per round (n >= 4f + 3), got --clients_per_round=10",
        ),
        (
            dict(robust="krum", robust_num_byzantine=3, clients_per_round=8),
            "--robust=krum with --robust_num_byzantine=3 needs at least 9 clients per round (n >= 2f + 3), got --clients_per_round=8",
        ),
        (
            dict(robust="median", robust_num_byzantine=2),
            "--robust_num_byzantine applies to --robust=krum|multi_krum|bulyan, not --robust=median",
        ),
        (dict(robust="trimmed_mean", robust_trim_fraction=0.5), "--robust_trim_fraction must be in [0, 0.5), got 0.5"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_the_reason(flags, message):
    with pytest.raises(errors.ConfigError) as info:
        make_config(**flags)
    assert str(info.value) == message


def test_the_cohort_is_checked_once_the_task_fixes_it():
    # --clients_per_round unset: 10 by default, fewer when the task has fewer clients.
    cfg = make_config(robust="bulyan", robust_num_byzantine=2)
    with pytest.raises(errors.ConfigError, match=r"needs at least 11 clients per round .* got --clients_per_round=10"):
        aggregation.build_aggregator(loop.fit_to_task(cfg, _small_task()), CLIENT_IDS)


EXPECTED_FIGURES = {
    "median": {"clients"},
    "trimmed_mean": {"clients", "trimmed_per_side"},
    "krum": {"selected", "rejected"},
    "multi_krum": {"selected", "rejected"},
    "bulyan": {"selected", "rejected", "kept_per_coordinate"},
    "geometric_median": {"iterations"},
}
_TASK = []


def _small_task():
    if not _TASK:
        _TASK.append(digits.create_task(num_clients=12, eval_clients=2, alpha=1.0, seed=0))
    return _TASK[0]


@pytest.mark.parametrize(
    "defence, runtime",
    [
        ("median", "inprocess"),  # the gathering compiles to a MapReduceForm
        pytest.param("trimmed_mean", "cpp", marks=pytest.mark.slow),
        pytest.param("krum", "cpp", marks=pytest.mark.slow),
        pytest.param("multi_krum", "cpp", marks=pytest.mark.slow),
        pytest.param("bulyan", "cpp", marks=pytest.mark.slow),
        pytest.param("geometric_median", "cpp", marks=pytest.mark.slow),
    ],
)
def test_three_rounds_of_digits_train_with_each_defence(tmp_path, defence, runtime):
    f = {"robust_num_byzantine": 1} if defence in ("krum", "multi_krum", "bulyan") else {}
    cfg = make_config(
        digits_num_clients=12,
        digits_eval_clients=2,
        digits_alpha=1.0,
        client_epochs=1,
        client_batch_size=32,
        rounds=3,
        clients_per_round=7,
        eval_every=0,
        robust=defence,
        robust_norm_bound=5.0,
        root_dir=str(tmp_path),
        experiment_name="r",
        runtime=runtime,
        **f,
    )
    lines = []
    result = loop.run(cfg, _small_task(), print_fn=lines.append)
    assert result.rounds_done == 3
    with open(os.path.join(tmp_path, "r", "results", "metrics.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    for row in rows:
        assert math.isfinite(float(row["train/loss"]))
    # What the rule did, each round, under the wrappers' names (norm bound, zeroing).
    figures = {k.rsplit("/", 1)[1] for k in rows[0] if k.startswith("aggregator/") and "/robust/" in k}
    assert figures == EXPECTED_FIGURES[defence]
    assert "└ robust" in "\n".join(lines)
    assert math.isfinite(result.final_eval["eval/loss"])
