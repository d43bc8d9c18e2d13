import asyncio
import json
import os

import numpy as np
import pytest
import tensorflow_federated as tff

from tffpipe.program import checkpoints
from tffpipe.program import state_files

FP = {"task": "digits", "seed": 0}


def _state(value):
    return {"weights": [np.full((2, 3), value, np.float32), np.array([value], np.float32)], "count": np.int64(value)}


def _manager(tmp_path, fingerprint=FP, keep=5):
    return checkpoints.CheckpointManager(str(tmp_path / "ckpt"), keep=keep, fingerprint=fingerprint)


def test_restore_returns_the_newest_state(tmp_path):
    manager = _manager(tmp_path)
    assert manager.restore(_state(0)) is None
    for r in (1, 2, 3):
        manager.save(checkpoints.ProgramState(r, _state(r)))
    restored = _manager(tmp_path).restore(_state(0))
    assert restored.round_num == 3
    np.testing.assert_array_equal(restored.learning_state["weights"][0], np.full((2, 3), 3))
    assert int(restored.learning_state["count"]) == 3


def test_only_the_newest_are_kept(tmp_path):
    manager = _manager(tmp_path, keep=2)
    for r in range(1, 5):
        manager.save(checkpoints.ProgramState(r, _state(r)))
    assert manager.versions() == [3, 4]


def _corrupt(directory, version):
    folder = os.path.join(directory, f"program_state_{version}")
    name = state_files.ARRAYS_FILE if state_files.holds_arrays(folder) else "saved_model.pb"
    path = os.path.join(folder, name)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def test_unreadable_newest_falls_back_and_is_moved_aside(tmp_path):
    manager = _manager(tmp_path)
    for r in (1, 2):
        manager.save(checkpoints.ProgramState(r, _state(r)))
    _corrupt(str(tmp_path / "ckpt"), 2)
    restored = _manager(tmp_path).restore(_state(0))
    assert restored.round_num == 1
    assert os.path.isdir(tmp_path / "ckpt" / "program_state_2.unreadable")
    # The resumed run can save round 2 again.
    manager.save(checkpoints.ProgramState(2, _state(22)))
    assert _manager(tmp_path).restore(_state(0)).round_num == 2


def test_no_readable_checkpoint_refuses_instead_of_starting_over(tmp_path):
    manager = _manager(tmp_path)
    manager.save(checkpoints.ProgramState(1, _state(1)))
    _corrupt(str(tmp_path / "ckpt"), 1)
    with pytest.raises(checkpoints.ResumeError, match=r"no readable checkpoint in .*ckpt \(newest, round 1"):
        _manager(tmp_path).restore(_state(0))
    assert os.path.isdir(tmp_path / "ckpt" / "program_state_1")


def test_different_settings_are_refused_with_the_setting_named(tmp_path):
    _manager(tmp_path).save(checkpoints.ProgramState(1, _state(1)))
    other = _manager(tmp_path, fingerprint={"task": "digits", "seed": 5})
    with pytest.raises(checkpoints.ResumeError, match=r"different settings \(seed: 0 -> 5\)"):
        other.restore(_state(0))


def test_fingerprint_inside_the_checkpoint_is_checked_too(tmp_path):
    _manager(tmp_path).save(checkpoints.ProgramState(1, _state(1)))
    os.remove(tmp_path / "ckpt" / "fingerprint.json")
    other = _manager(tmp_path, fingerprint={"task": "emnist", "seed": 0})
    with pytest.raises(checkpoints.ResumeError, match=r"task: 'digits' -> 'emnist'"):
        other.restore(_state(0))


def test_stale_temporary_folders_are_removed(tmp_path):
    os.makedirs(tmp_path / "ckpt" / "program_state_4_temp1234")
    manager = _manager(tmp_path)
    assert manager.versions() == []
    assert not os.path.exists(tmp_path / "ckpt" / "program_state_4_temp1234")


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00"])
def test_an_unreadable_fingerprint_file_is_rewritten_from_the_checkpoint(tmp_path, garbage):
    _manager(tmp_path).save(checkpoints.ProgramState(2, _state(2)))
    path = tmp_path / "ckpt" / "fingerprint.json"
    path.write_bytes(garbage)
    restored = _manager(tmp_path).restore(_state(0))
    assert restored.round_num == 2
    assert json.loads(path.read_text()) == {"task": "digits", "seed": 0}
    # And a changed setting is still refused, by the checkpoint's own copy.
    path.write_bytes(garbage)
    with pytest.raises(checkpoints.ResumeError, match=r"seed: 0 -> 5"):
        _manager(tmp_path, fingerprint={"task": "digits", "seed": 5}).restore(_state(0))


def _save_as_tff_did(directory, round_num, state):
    """A version written by TFF's FileProgramStateManager, as runs before the arrays format wrote them."""
    manager = tff.program.FileProgramStateManager(directory, prefix="program_state_", keep_total=0)
    value = {"round_num": round_num, "fingerprint": json.dumps(FP, sort_keys=True), "learning_state": state}
    asyncio.run(manager.save(value, round_num))


def test_versions_written_by_tffs_manager_are_still_read(tmp_path):
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    _save_as_tff_did(directory, 1, _state(1))
    restored = _manager(tmp_path).restore(_state(0))
    assert restored.round_num == 1
    np.testing.assert_array_equal(restored.learning_state["weights"][0], np.full((2, 3), 1))
    # A run resumed from it writes the arrays format next to it, and falls back to it.
    _manager(tmp_path).save(checkpoints.ProgramState(2, _state(2)))
    assert state_files.holds_arrays(os.path.join(directory, "program_state_2"))
    assert not state_files.holds_arrays(os.path.join(directory, "program_state_1"))
    _corrupt(directory, 2)
    restored = _manager(tmp_path).restore(_state(0))
    assert restored.round_num == 1
    assert int(restored.learning_state["count"]) == 1


def test_arrays_format_keeps_every_value_exactly(tmp_path):
    state = {
        "weights": [np.arange(6, dtype=np.float64).reshape(2, 3) / 7, np.array([-1.5], np.float16)],
        "step": np.int64(2**40 + 3),
        "flags": np.array([True, False]),
        "name": "client \u00e9",
        "blob": b"\x00key\x00\x00",
    }
    _manager(tmp_path).save(checkpoints.ProgramState(7, state))
    folder = tmp_path / "ckpt" / "program_state_7"
    assert sorted(os.listdir(folder)) == sorted([state_files.ARRAYS_FILE, state_files.HEADER_FILE])
    restored = _manager(tmp_path).restore(state).learning_state
    for name in ("step", "flags"):
        np.testing.assert_array_equal(restored[name], state[name])
        assert np.asarray(restored[name]).dtype == np.asarray(state[name]).dtype
    for saved, original in zip(restored["weights"], state["weights"], strict=True):
        assert saved.dtype == original.dtype
        np.testing.assert_array_equal(saved, original)
    assert restored["name"] == state["name"]
    assert restored["blob"] == state["blob"]


def test_a_state_the_arrays_cannot_hold_is_written_as_a_saved_model(tmp_path):
    state = {"weights": [np.ones(3, np.float32)], "labels": np.array([b"a", b"bc"])}
    _manager(tmp_path).save(checkpoints.ProgramState(1, state))
    assert os.path.exists(tmp_path / "ckpt" / "program_state_1" / "saved_model.pb")
    restored = _manager(tmp_path).restore(state).learning_state
    assert list(restored["labels"]) == [b"a", b"bc"]


def test_a_state_of_another_shape_is_refused_as_a_structure_change(tmp_path):
    _manager(tmp_path).save(checkpoints.ProgramState(1, _state(1)))
    other = {"weights": [np.zeros((3, 3), np.float32), np.zeros(1, np.float32)], "count": np.int64(0)}
    with pytest.raises(
        checkpoints.ResumeError, match=r"round 1: saved value \d has shape \(2, 3\), .*\(3, 3\)\); if settings"
    ):
        _manager(tmp_path).restore(other)
    fewer = {"weights": [np.zeros((2, 3), np.float32)], "count": np.int64(0)}
    with pytest.raises(checkpoints.ResumeError, match=r"saved state has 3 values, this run's state structure has 2"):
        _manager(tmp_path).restore(fewer)


def test_a_save_that_fails_midway_leaves_no_version(tmp_path, monkeypatch):
    manager = _manager(tmp_path)
    manager.save(checkpoints.ProgramState(1, _state(1)))

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(state_files.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        manager.save(checkpoints.ProgramState(2, _state(2)))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["fingerprint.json", "program_state_1"]
    assert _manager(tmp_path).restore(_state(0)).round_num == 1
