"""The aggregation stacks `build_aggregator` composes, measured on plain vectors."""

import numpy as np
import pytest
import tensorflow_federated as tff

from conftest import make_config
from tffpipe import config
from tffpipe import tasks
from tffpipe.program import assembly as aggregation
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.runtimes import contexts as runtime

from tffpipe_tasks import digits

DIM = 500
CLIENT_IDS = [f"c{i}" for i in range(40)]


def _cfg(clients_per_round=4, zeroing=False, secure=False, weighting="auto", **dp):
    return make_config(
        rounds=10,
        clients_per_round=clients_per_round,
        zeroing=zeroing,
        secure_aggregation=secure,
        client_weighting=weighting,
        **dp,
    )


def _process(cfg, dim=DIM):
    factory, params = aggregation.build_aggregator(cfg, CLIENT_IDS)
    value_type = tff.TensorType(np.float32, [dim])
    if params.weighted:
        return factory.create(value_type, tff.TensorType(np.float32)), params
    return factory.create(value_type), params


def _vectors(n, norm, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, DIM)).astype(np.float32)
    return [v / np.linalg.norm(v) * norm for v in values]


def test_fixed_clipping_bounds_each_clients_contribution():
    clip, k = 1.5, 4
    process, params = _process(_cfg(k, dp="fixed", dp_clip_norm=clip, dp_noise_multiplier=0.0))
    assert params.summary == "clipping -> DP -> mean"
    state = process.initialize()
    for norm in (0.5, 4.0, 300.0):
        (update,) = _vectors(1, norm, seed=int(norm))
        output = process.next(state, [update])
        contribution = np.linalg.norm(output.result) * k  # the mean divides by k
        assert contribution == pytest.approx(min(norm, clip), rel=1e-5)
    # Several large updates: the sum is at most k * C, each clipped to C.
    output = process.next(state, _vectors(k, 50.0))
    assert np.linalg.norm(output.result) * k <= k * clip * (1 + 1e-6)


def test_noise_stddev_is_noise_multiplier_times_clip():
    z, clip, k = 1.3, 2.0, 5
    process, _ = _process(_cfg(k, dp="fixed", dp_clip_norm=clip, dp_noise_multiplier=z))
    state = process.initialize()
    samples = []
    for _ in range(20):
        output = process.next(state, [np.zeros(DIM, np.float32)] * k)
        state = output.state
        samples.append(np.asarray(output.result) * k)  # noise on the sum
    samples = np.concatenate(samples)
    # 10,000 samples: the sample stddev is within 3% of sigma with
    # overwhelming probability (its relative standard error is 0.7%).
    assert np.std(samples) == pytest.approx(z * clip, rel=0.03)
    assert abs(np.mean(samples)) < 4 * z * clip / np.sqrt(samples.size)


def test_secure_sum_equals_plain_sum_within_quantisation_error():
    updates = _vectors(5, 0.5)
    plain, _ = _process(_cfg(5, weighting="uniform"))
    secure, params = _process(_cfg(5, secure=True, weighting="uniform"))
    assert params.uses_secure_sum and "secure sum" in params.summary
    expected = np.mean(updates, axis=0)
    plain_result = plain.next(plain.initialize(), updates).result
    with runtime.test_runtime():
        secure_result = secure.next(secure.initialize(), updates).result
    np.testing.assert_allclose(plain_result, expected, atol=1e-7)
    # 32-bit quantisation of [-1, 1]: steps of 5e-10; a float32 mean is coarser.
    np.testing.assert_allclose(secure_result, expected, atol=1e-6)
    assert not np.array_equal(secure_result, np.zeros(DIM))


def test_secure_sum_under_dp_equals_the_clipped_mean():
    updates = _vectors(4, 3.0)
    process, params = _process(_cfg(4, secure=True, dp="fixed", dp_clip_norm=1.0, dp_noise_multiplier=0.0))
    assert params.summary == "clipping -> DP -> secure sum -> mean"
    clipped = [u / np.linalg.norm(u) for u in updates]
    with runtime.test_runtime():
        result = process.next(process.initialize(), updates).result
    np.testing.assert_allclose(result, np.mean(clipped, axis=0), atol=1e-6)


def test_distributed_dp_without_noise_recovers_the_mean():
    updates = _vectors(4, 0.5)
    process, params = _process(_cfg(4, dp="distributed", dp_clip_norm=1.0, dp_noise_multiplier=0.0))
    assert params.uses_secure_sum
    with runtime.test_runtime():
        output = process.next(process.initialize(), updates)
    # 20-bit integers after a random rotation and scaling: error ~1e-5.
    np.testing.assert_allclose(output.result, np.mean(updates, axis=0), atol=2e-4)


def test_zeroing_drops_a_huge_update():
    process, params = _process(_cfg(4, zeroing=True, weighting="uniform"))
    assert params.summary == "zeroing -> mean"
    updates = _vectors(3, 1.0) + [np.full(DIM, 1e6, np.float32)]
    output = process.next(process.initialize(), updates)
    assert output.measurements["zeroed_count"] == 1
    # The zeroed client still counts in the denominator.
    np.testing.assert_allclose(output.result, np.sum(updates[:3], axis=0) / 4, atol=1e-6)


def test_target_epsilon_solves_the_noise(monkeypatch):
    cfg = _cfg(10, dp="fixed", dp_target_epsilon=3.0, dp_delta=1e-5)
    _, params = aggregation.build_aggregator(cfg, CLIENT_IDS)
    assert params.noise_from_target
    from tffpipe.privacy import accounting as privacy

    spent = privacy.RunAccountant(
        noise_multiplier=params.noise_multiplier,
        clients_per_round=10,
        num_clients=40,
        delta=1e-5,
    ).epsilon(10)
    assert spent == pytest.approx(3.0, rel=1e-3) and spent <= 3.0 + 1e-3


def test_adaptive_target_epsilon_that_needs_too_much_noise_is_refused():
    cfg = _cfg(4, dp="adaptive", dp_target_epsilon=0.5)
    with pytest.raises(config.ConfigError) as info:
        aggregation.build_aggregator(cfg, CLIENT_IDS)
    assert "below 0.1 x --clients_per_round = 0.4" in str(info.value)


def test_nan_client_update_is_zeroed_and_the_round_completes():
    task = digits.create_task(num_clients=6, eval_clients=2, seed=0)
    cfg = make_config(rounds=1, clients_per_round=2)
    process, _ = assembly.build_learning_process(task, cfg, task.train_data.client_ids)
    initial = builder.initial_model_weights(task, 0)
    state = process.set_model_weights(process.initialize(), initial)
    spec = tasks.ClientSpec(num_epochs=1, batch_size=20)
    good = task.client_dataset(task.train_data.client_ids[0], spec, seed=0)
    poisoned = good.map(lambda x, y: (x * np.float32("nan"), y))
    output = process.next(state, [good, poisoned])
    weights = process.get_model_weights(output.state)
    assert all(np.all(np.isfinite(w)) for w in weights.trainable)
    assert output.metrics["finalizer"]["update_non_finite"] == 0
    # The good client's update went through: the model moved.
    assert any(not np.allclose(a, b) for a, b in zip(weights.trainable, initial.trainable))
    # ...and equals the model trained on the good client alone.
    alone = process.get_model_weights(process.next(state, [good]).state)
    for a, b in zip(weights.trainable, alone.trainable):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _run_two_rounds(factory, updates, weighted):
    value_type = tff.TensorType(np.float32, [DIM])
    process = factory.create(value_type, tff.TensorType(np.float32)) if weighted else factory.create(value_type)
    state, results = process.initialize(), []
    for round_updates in updates:
        args = (state, round_updates, [1.0, 2.0, 3.0, 4.0]) if weighted else (state, round_updates)
        output = process.next(*args)
        state = output.state
        results.append(np.asarray(output.result))
    return results


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_stacks_equal_tffs_own_aggregators(secure, weighted):
    # The layers restate TFF's robust_aggregator and secure_aggregator; the
    # composed stacks must compute exactly what TFF's do, round after round.
    updates = [_vectors(4, norm, seed=i) for i, norm in enumerate((0.7, 30.0))]
    ours, stack = aggregation.build_aggregator(
        _cfg(4, zeroing=True, secure=secure, weighting="num_examples" if weighted else "uniform"), CLIENT_IDS
    )
    if secure:
        theirs = tff.learning.secure_aggregator(zeroing=True, clipping=True, weighted=weighted)
    else:
        theirs = tff.learning.robust_aggregator(zeroing=True, clipping=False, weighted=weighted)
    assert stack.summary == ("zeroing -> clipping -> mean -> secure sum" if secure else "zeroing -> mean")
    with runtime.test_runtime():
        for a, b in zip(_run_two_rounds(ours, updates, weighted), _run_two_rounds(theirs, updates, weighted)):
            np.testing.assert_array_equal(a, b)


def test_a_user_layer_from_a_path_wraps_the_stack():
    # examples/norm_bound.py is the README's user layer, given by path.
    cfg = make_config(
        rounds=10,
        clients_per_round=4,
        zeroing=False,
        client_weighting="uniform",
        aggregator="examples.norm_bound:norm_bound",
        norm_bound_max_norm=0.5,
    )
    assert cfg.aggregation.plugin.options == {"max_norm": 0.5}
    process, stack = _process(cfg)
    assert stack.summary == "user layer -> mean"
    updates = _vectors(4, 3.0)
    result = process.next(process.initialize(), updates).result
    np.testing.assert_allclose(result, np.mean([u / 6.0 for u in updates], axis=0), atol=1e-6)


def test_a_user_layer_with_a_bad_option_is_refused_in_one_line():
    with pytest.raises(config.ConfigError) as info:
        make_config(aggregator="examples.norm_bound:no_such_layer")
    assert "module 'examples.norm_bound' has no callable 'no_such_layer'" in str(info.value)
    with pytest.raises(config.ConfigError) as info:
        make_config(aggregator="examples.norm_bound:norm_bound", norm_bound_max_norms=1.0)
    assert str(info.value) == "unknown setting 'norm_bound_max_norms'"
