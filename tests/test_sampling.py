import pytest

from tffpipe.program import sampling

IDS = [f"c{i}" for i in range(40)]


def test_sample_depends_only_on_seed_and_round():
    a = sampling.sample_clients(IDS, 10, seed=7, round_num=4)
    b = sampling.sample_clients(IDS, 10, seed=7, round_num=4)
    assert a == b
    assert len(set(a)) == 10 and set(a) <= set(IDS)
    assert a != sampling.sample_clients(IDS, 10, seed=7, round_num=5)
    assert a != sampling.sample_clients(IDS, 10, seed=8, round_num=4)


def test_sampling_is_uniform_over_many_rounds():
    counts = {cid: 0 for cid in IDS}
    rounds = 2000
    for r in range(rounds):
        for cid in sampling.sample_clients(IDS, 10, seed=0, round_num=r):
            counts[cid] += 1
    expected = rounds * 10 / len(IDS)  # 500 per client
    # Binomial std is about 19; 5 sigma either side.
    assert all(abs(c - expected) < 100 for c in counts.values()), counts


@pytest.mark.parametrize("k", [0, 41])
def test_impossible_sample_sizes_fail(k):
    with pytest.raises(ValueError, match=f"cannot sample {k} of 40"):
        sampling.sample_clients(IDS, k, seed=0, round_num=1)
