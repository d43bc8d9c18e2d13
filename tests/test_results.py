"""`tffpipe.load_run` and `tffpipe.load_runs` on folders that are not runs: one-line errors (runs read back: test_train)."""

import json

import pytest

import tffpipe
from tffpipe import config
from tffpipe import errors
from tffpipe import results
from tffpipe import settings


def test_a_folder_without_config_json_is_not_a_run(tmp_path):
    with pytest.raises(errors.UserError, match=r"is not a run folder: it has no config.json$"):
        tffpipe.load_run(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(errors.UserError, match=r"^cannot read .*config.json: "):
        tffpipe.load_run(str(tmp_path))


def test_no_matching_run_folder_is_one_line(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(errors.UserError, match=r"^no run folder \(a folder with config.json\) matches '.*\*'$"):
        tffpipe.load_runs(str(tmp_path / "*"))


def test_saved_settings_come_back_by_flag_name_for_every_flag():
    cfg = config.from_values({"rounds": 7, "dp": "fixed", "dp_noise_multiplier": 0.5, "client_learning_rate": 0.3})
    flat = results.flat_settings(json.loads(json.dumps(cfg.to_dict())))
    assert flat["rounds"] == 7 and flat["dp"] == "fixed" and flat["client_learning_rate"] == 0.3
    assert set(flat) == set(settings.by_flag(config.RunConfig))
