import json
import os

import numpy as np
import pytest

from tffpipe.program import checkpoints

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
    path = os.path.join(directory, f"program_state_{version}", "saved_model.pb")
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
