"""--secure_protocol: CKKS sums equal the plain (and masked) sums, the server holds no secret key, keys persist, refusals."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, make_config, user_env
from tffpipe import config
from tffpipe import errors
from tffpipe.aggregation.protocols import ckks
from tffpipe.aggregation.protocols import ckks_keys
from tffpipe.aggregation.protocols import masking

# The three kinds of secure sum TFF's intrinsics ask for, for 6 clients:
# 32-bit values, values up to a maximum, and a modular sum that wraps.
CLIENTS = 6
MODULI = [CLIENTS * (2**32 - 1) + 1, CLIENTS * 1_048_575 + 1, 2**20]
SHAPES = [(3, 2000), (), (5,)]
BOUNDS = [2**32, 1_048_576, 2**20]
LARGEST = [m - 1 for m in MODULI[:2]] + [CLIENTS * (2**20 - 1)]  # largest sums before the modulus


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, b, size=s, dtype=np.int64) for b, s in zip(BOUNDS, SHAPES)] for _ in range(CLIENTS)]


def _plain_sums(inputs):
    return [np.sum([c[leaf] for c in inputs], axis=0) % m for leaf, m in enumerate(MODULI)]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return ckks.build(ckks.Settings(), str(tmp_path_factory.mktemp("keys")))


def test_the_ckks_sum_equals_the_plain_and_the_masked_sum(protocol):
    inputs = _inputs()
    keys = protocol.round_keys(CLIENTS, MODULI, LARGEST)
    uploaded = [keys.protect(i, values, MODULI) for i, values in enumerate(inputs)]
    ours = protocol.total(uploaded, MODULI, SHAPES)
    plain = _plain_sums(inputs)
    assert plain[2].max() < 2**20 and np.sum([c[2] for c in inputs], axis=0).max() >= 2**20  # it did wrap
    masked = masking.MaskingProtocol()
    mask_keys = masked.round_keys(CLIENTS, MODULI, LARGEST)
    theirs = masked.total([mask_keys.protect(i, v, MODULI) for i, v in enumerate(inputs)], MODULI, SHAPES)
    for a, b, c, shape in zip(ours, plain, theirs, SHAPES):
        assert a.dtype == np.uint64 and a.shape == shape
        np.testing.assert_array_equal(a, b.astype(np.uint64))
        np.testing.assert_array_equal(a, c)
    # One client's upload: 6,006 values in two ciphertexts of 4,096 slots, each far larger than the values.
    assert len(uploaded[0]) == 2 and all(len(piece) > 8 * 4096 for piece in uploaded[0])


@pytest.mark.parametrize("name", ["masking", "ckks"])
def test_partial_sums_of_some_clients_add_up_to_the_round_sum(protocol, name):
    # As two slots (or two Ray actors) each sum their own clients' uploads before the server adds the two.
    chosen = protocol if name == "ckks" else masking.MaskingProtocol()
    inputs = _inputs(seed=2)
    keys = chosen.round_keys(CLIENTS, MODULI, LARGEST)
    halves = []
    for clients in ([0, 2, 4], [1, 3, 5]):
        mine = keys.for_clients(clients)
        partial = mine.partial_sum(MODULI)
        for i in clients:
            partial.add(mine.protect(i, inputs[i], MODULI))
        assert partial.count == 3
        halves.append(partial.value())
    for ours, plain in zip(chosen.total([*halves, None], MODULI, SHAPES), _plain_sums(inputs)):
        np.testing.assert_array_equal(ours, plain.astype(np.uint64))


def test_the_server_side_holds_no_secret_key_and_cannot_decrypt(protocol):
    import tenseal as ts

    public = ckks.public_context(protocol.aggregator.context_blob)
    assert not public.is_private()
    keys = protocol.round_keys(CLIENTS, MODULI, LARGEST)
    assert keys.context_blob == protocol.aggregator.context_blob  # clients get the same public context
    for holder in (protocol.aggregator, keys):
        assert not any(isinstance(v, ts.Context) and v.is_private() for v in vars(holder).values())
    summed = protocol.aggregator.add([keys.protect(i, v, MODULI) for i, v in enumerate(_inputs())])
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        ts.ckks_vector_from(public, summed[0]).decrypt()
    # A blob with a secret key is refused where only public ones belong.
    secret = ckks.make_context(ckks.parameters(ckks.Settings())).serialize(save_secret_key=True)
    with pytest.raises(ValueError, match="holds a secret key"):
        ckks.public_context(secret)


def test_floats_quantised_as_secure_sums_quantise_them_come_back_within_1e6_relative(protocol):
    # Hand-made updates scaled to 32-bit integers the way a fixed-range secure sum does, summed under CKKS.
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.3, size=1000).clip(-1, 1) for _ in range(CLIENTS)]
    scale = (2**32 - 1) / 2.0
    encoded = [[np.rint((u + 1.0) * scale).astype(np.int64)] for u in updates]
    moduli = [CLIENTS * (2**32 - 1) + 1]
    keys = protocol.round_keys(CLIENTS, moduli, [moduli[0] - 1])
    total = protocol.total([keys.protect(i, e, moduli) for i, e in enumerate(encoded)], moduli, [(1000,)])[0]
    decoded = total.astype(np.float64) / scale - CLIENTS
    np.testing.assert_allclose(decoded, np.sum(updates, axis=0), rtol=1e-6, atol=1e-6)


def test_keys_are_made_once_kept_owner_only_and_reused(tmp_path):
    params = ckks.parameters(ckks.Settings())
    first = ckks_keys.KeyHolder.load_or_create(str(tmp_path), params)
    path = tmp_path / ckks_keys.FILE_NAME
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    second = ckks_keys.KeyHolder.load_or_create(str(tmp_path), params)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert second.public_context() == first.public_context()
    # A ciphertext made under the first holder's public key decrypts under the second's secret one.
    keys = ckks.CkksKeys(first.public_context(), params.slots)
    values = [np.arange(10, dtype=np.int64)]
    total = second.reveal(
        ckks.CkksAggregator(first.public_context()).add([keys.protect(0, values, [11])]), [11], [(10,)]
    )
    np.testing.assert_array_equal(total[0], np.arange(10))
    other = ckks.parameters(ckks.Settings(security=256))
    with pytest.raises(errors.UserError, match="were made for .*resume with the run's own --ckks_\\* settings"):
        ckks_keys.KeyHolder.load_or_create(str(tmp_path), other)


def test_a_round_whose_sums_ckks_cannot_decode_exactly_is_refused(protocol):
    # 2^32 - 1 from each of 50,000 clients reaches 2^48; a modular sum's values add up before the modulus.
    with pytest.raises(errors.UserError, match=r"with 50000 clients the secure sums reach 2\^48, beyond the 2\^47"):
        protocol.round_keys(50_000, [50_000 * (2**32 - 1) + 1], [50_000 * (2**32 - 1)])
    protocol.round_keys(1000, [1000 * (2**32 - 1) + 1], [1000 * (2**32 - 1)])  # 2^42: fine
    with pytest.raises(ValueError, match=r"outside \[0, 11\)"):
        protocol.round_keys(1, [11], [10]).protect(0, [np.array([11])], [11])


@pytest.mark.parametrize(
    "values, message",
    [
        (
            dict(secure_protocol="ckks"),
            "--secure_protocol=ckks protects secure sums and this run has none: add --secure_aggregation",
        ),
        (
            dict(secure_protocol="ckks", secure_aggregation=True, runtime="cpp"),
            "--secure_protocol=ckks needs --runtime=inprocess, ray or auto: TFF's own runtime (--runtime=cpp) executes "
            "secure sums itself and cannot run another protocol",
        ),
        (
            dict(secure_protocol="ckks", secure_aggregation=True, ckks_coeff_mod_bits="60,60,60,60"),
            "--secure_protocol=ckks: moduli of 240 bits at degree 8192 give less than 128-bit security (the homomorphic "
            "encryption standard allows at most 218 bits); use fewer or smaller moduli, or a larger "
            "--ckks_poly_modulus_degree",
        ),
        (
            dict(secure_protocol="ckks", secure_aggregation=True, ckks_security=256, ckks_poly_modulus_degree=8192),
            "--secure_protocol=ckks: moduli of 160 bits at degree 8192 give less than 256-bit security (the homomorphic "
            "encryption standard allows at most 118 bits); use fewer or smaller moduli, or a larger "
            "--ckks_poly_modulus_degree",
        ),
        (
            dict(secure_protocol="ckks", secure_aggregation=True, ckks_coeff_mod_bits="60,40"),
            "--secure_protocol=ckks: moduli 60,40 with scale 2^40 leave 18 bits for the sum, too little for 32-bit "
            "secure-sum values; the data moduli (all but the last) must exceed the scale by at least 35 bits",
        ),
        (
            dict(secure_protocol="ckks", secure_aggregation=True, ckks_scale_bits=20),
            "--ckks_scale_bits must be 0 (the preset's) or in 30..60, got 20",
        ),
        (
            dict(secure_aggregation=True, ckks_scale_bits=40),
            "--ckks_scale_bits applies to --secure_protocol=ckks, not --secure_protocol=masking",
        ),
        (
            dict(secure_protocol="ckks", secure_aggregation=True, robust="median"),
            "--robust=median cannot run under --secure_aggregation: the rule reads each client's update, which secure "
            "aggregation exists to hide from the server",
        ),
        (dict(secure_protocol="paillier"), "--secure_protocol='paillier' is not one of: masking, ckks"),
    ],
)
def test_settings_ckks_cannot_use_are_refused_in_one_line(values, message):
    with pytest.raises(config.ConfigError) as info:
        make_config(**values)
    assert str(info.value) == message


def test_the_launcher_refuses_in_one_line_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tffpipe.train",
            "--secure_protocol=ckks",
            "--secure_aggregation",
            "--runtime=cpp",
            f"--root_dir={tmp_path}",
            "--rounds=1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=user_env(),
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --secure_protocol=ckks needs --runtime=inprocess")
    assert "Traceback" not in proc.stderr
    assert not os.listdir(tmp_path)


def _digits_engine(**values):
    from tffpipe.learning import builder
    from tffpipe.program import assembly
    from tffpipe.runtimes import inprocess_process
    from tffpipe.runtimes import registry as runtime_registry

    from tffpipe_tasks import digits

    task = digits.create_task(num_clients=12, eval_clients=2, alpha=1.0, seed=0)
    cfg = make_config(
        digits_num_clients=12,
        digits_eval_clients=2,
        client_batch_size=16,
        clients_per_round=6,
        secure_aggregation=True,
        runtime="inprocess",
        **values,
    )
    process, _ = assembly.build_learning_process(
        task, cfg, task.train_data.client_ids, runtime_registry.get("inprocess").loop_implementation()
    )
    return task, builder.initial_model_weights(task, 0), inprocess_process.InProcessProcess(process, ["/CPU:0"] * 2)


COMPOSED = {
    "adaptive_clipping_weighted": {},
    # DP noise is drawn unseeded (right for privacy), so the composition is compared without it.
    "dp_fixed_uniform": {"dp": "fixed", "dp_clip_norm": 0.5, "dp_noise_multiplier": 0.0, "zeroing": False},
}


@pytest.mark.parametrize(
    "case", [c if c == "adaptive_clipping_weighted" else pytest.param(c, marks=pytest.mark.slow) for c in COMPOSED]
)
def test_three_digits_rounds_under_ckks_end_at_the_masking_runs_weights(tmp_path, case):
    from tffpipe.program import sampling
    from tffpipe.tasks import ClientSpec

    task, initial, engine = _digits_engine(**COMPOSED[case])
    ids = list(task.train_data.client_ids)
    spec = ClientSpec(num_epochs=1, batch_size=16)
    weights = {}
    try:
        for name, protocol in (("masking", engine.protocol), ("ckks", ckks.build(ckks.Settings(), str(tmp_path)))):
            engine.protocol = protocol
            state = engine.set_model_weights(engine.initialize(), initial)
            for round_num in range(1, 4):
                chosen = sampling.sample_clients(ids, 6, seed=0, round_num=round_num)
                data = [task.client_dataset(cid, spec, seed=i) for i, cid in enumerate(chosen)]
                state = engine.next(state, data).state
            weights[name] = engine.get_model_weights(state).trainable
    finally:
        engine.close()
    assert engine.uses_secure_sum
    moved = max(float(np.abs(np.asarray(w) - np.asarray(i)).max()) for w, i in zip(weights["ckks"], initial.trainable))
    assert moved > 1e-3  # training happened
    for ours, theirs in zip(weights["ckks"], weights["masking"]):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.slow  # three full runs, about 100 s
def test_a_resumed_ckks_run_equals_a_straight_one_with_the_same_keys(tmp_path):
    import csv

    from tffpipe.program import loop

    from tffpipe_tasks import digits

    task = digits.create_task(num_clients=12, eval_clients=2, alpha=1.0, seed=0)

    def run(name, rounds):
        cfg = make_config(
            digits_num_clients=12,
            digits_eval_clients=2,
            client_batch_size=16,
            clients_per_round=6,
            secure_aggregation=True,
            secure_protocol="ckks",
            runtime="inprocess",
            rounds=rounds,
            eval_every=0,
            root_dir=str(tmp_path),
            experiment_name=name,
        )
        lines = []
        return loop.run(cfg, task, print_fn=lines.append), lines

    straight, lines = run("straight", 3)
    assert any("secure sums use CKKS encryption (128-bit preset)" in line for line in lines)
    assert any(
        line.startswith(
            "secure sum: CKKS, 128-bit preset: degree 8192, moduli 60,40,60 bits, scale 2^40: "
            "clients encrypt under the public key"
        )
        for line in lines
    )
    run("resumed", 2)
    key_file = tmp_path / "resumed" / "keys" / ckks_keys.FILE_NAME
    digest = hashlib.sha256(key_file.read_bytes()).hexdigest()
    resumed, lines = run("resumed", 3)
    assert any("resuming" in line.lower() for line in lines)
    assert hashlib.sha256(key_file.read_bytes()).hexdigest() == digest
    for ours, theirs in zip(resumed.model_weights.trainable, straight.model_weights.trainable):
        np.testing.assert_array_equal(ours, theirs)
    # The traffic counts whole ciphertexts: the model's 84,000 weights (and a few counts) take 21 of 4,096 slots,
    # besides a few plain bytes.
    with open(tmp_path / "straight" / "results" / "metrics.csv") as f:
        upload = float(next(csv.DictReader(f))["comm/upload_bytes_per_client"])
    weights = sum(int(np.prod(np.shape(w))) for w in straight.model_weights.trainable)
    assert 20 * 4096 < weights < 21 * 4096
    per_ciphertext = ckks.ciphertext_bytes(ckks.parameters(ckks.Settings()))
    assert 21 * per_ciphertext <= upload < 21 * per_ciphertext + 1000
