"""Vertical FL's cryptography: private set intersection and masked embedding sums."""

import numpy as np
import pytest
from scipy import stats

from tffpipe import errors
from tffpipe.vertical import masking
from tffpipe.vertical import psi


def _ids(*ranges):
    return [f"id{i}" for r in ranges for i in r]


@pytest.mark.parametrize(
    "a, b",
    [
        (_ids(range(0, 60)), _ids(range(40, 100))),  # overlapping
        (_ids(range(0, 30)), _ids(range(0, 30))),  # identical
        (_ids(range(0, 10)), _ids(range(5, 6))),  # one shared
    ],
)
def test_psi_finds_exactly_the_intersection(a, b):
    result = psi.intersect_pair(psi.PsiParty("a", a), psi.PsiParty("b", b))
    assert result.shared == frozenset(a) & frozenset(b)
    assert result.passive_sent_bytes == 32 * (len(a) + len(b))


def test_disjoint_parties_are_refused_in_one_line():
    with pytest.raises(errors.TaskError, match=r"^parties 'a' and 'b' share no sample ID: nothing to align \("):
        psi.align({"a": _ids(range(10)), "b": _ids(range(10, 20))}, "a", test_fraction=0.2, seed=0)


def test_ids_that_differ_only_as_strings_are_named_with_examples():
    with pytest.raises(errors.TaskError) as info:
        psi.align({"a": ["1.0", "2.0", "3.0", "4.0"], "b": ["1", "2"]}, "a", test_fraction=0.2, seed=0)
    assert str(info.value) == (
        "parties 'a' and 'b' share no sample ID: nothing to align (IDs are compared as strings, so 1 and "
        "'1.0' or '00100' and 100 differ: 'a' has '1.0', '2.0', '3.0', ...; 'b' has '1', '2')"
    )


def test_a_long_intersection_prints_progress():
    lines = []
    progress = psi.Progress("psi of a and b", 4 * 300, lines.append, every_sec=0.0)
    result = psi.intersect_pair(
        psi.PsiParty("a", _ids(range(300))), psi.PsiParty("b", _ids(range(150, 450))), progress.tick
    )
    assert len(result.shared) == 150
    assert len(lines) == 4 * 300
    assert lines[0] == "psi of a and b: 0% (1 of 1,200 exponentiations)"
    assert lines[-1] == "psi of a and b: 100% (1,200 of 1,200 exponentiations)"


def test_duplicate_ids_are_refused_in_one_line():
    with pytest.raises(errors.TaskError, match=r"^party 'b' lists sample ID 'id3' more than once$"):
        psi.align({"a": _ids(range(10)), "b": _ids(range(5), range(3, 4))}, "a", test_fraction=0.2, seed=0)


def test_what_the_passive_party_receives_reveals_no_other_id():
    a_ids, b_ids = _ids(range(0, 50)), _ids(range(30, 80))
    active, passive = psi.PsiParty("a", a_ids), psi.PsiParty("b", b_ids)
    received = active.blind_own()  # message 1, all the passive party gets of A's IDs
    universe = _ids(range(0, 80))
    hashed = {psi.hash_to_group(x) for x in universe}
    # Not the IDs, not their hashes, and nothing the passive party can
    # compute with its own key from an ID it might guess.
    own_guesses = set(passive.blind_received(sorted(hashed)))
    for value in received:
        assert value not in hashed and value not in own_guesses
        assert not any(x.encode() in value for x in universe)
    # Message 3 names positions in its own list only, and only shared ones.
    result = psi.intersect_pair(active, passive)
    assert result.shared == frozenset(_ids(range(30, 50)))


def test_alignment_is_seeded_and_split():
    ids = {"a": _ids(range(0, 100)), "b": _ids(range(20, 120)), "c": _ids(range(10, 90))}
    first = psi.align(ids, "a", test_fraction=0.25, seed=3)
    again = psi.align(ids, "a", test_fraction=0.25, seed=3)
    other = psi.align(ids, "a", test_fraction=0.25, seed=4)
    assert set(first.train_ids) | set(first.test_ids) == set(_ids(range(20, 90)))
    assert len(first.test_ids) == round(0.25 * 70) and not set(first.train_ids) & set(first.test_ids)
    assert first.train_ids == again.train_ids and first.train_ids != other.train_ids
    assert first.pair_sizes == {("a", "b"): 80, ("a", "c"): 80}


def test_masked_embedding_sum_equals_the_plain_sum():
    rng = np.random.default_rng(0)
    embeddings = [rng.normal(scale=3.0, size=(32, 8)).astype(np.float32) for _ in range(3)]
    secure = masking.EmbeddingSum(3)
    total = secure.unmasked_sum([secure.masked(i, e) for i, e in enumerate(embeddings)])
    np.testing.assert_allclose(total, np.sum(embeddings, axis=0), atol=1e-6)


def test_a_single_masked_embedding_is_uniform():
    embedding = np.full((4000,), 0.5, np.float32)  # the same value everywhere
    masked = masking.EmbeddingSum(2).masked(0, embedding)
    # Uniform over 16 equal bins of [0, 2**63): chi-square.
    counts = np.bincount((masked >> np.uint64(59)).astype(np.int64), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_fixed_point_round_trip_keeps_negatives():
    values = np.array([-2.5, -1e-6, 0.0, 3.25, 1000.0])
    np.testing.assert_allclose(masking.decode(masking.encode(values)), values, atol=2**-24)
