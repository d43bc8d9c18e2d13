"""tffpipe/config/groups.pyi declares the fields of the settings groups built from the registries, and stays in step."""

import ast
import dataclasses
import os

from tffpipe import config
from tffpipe import config_stub


def test_the_stub_in_the_repository_is_in_step_with_the_registries(capsys):
    assert config_stub.main(["--check"]) == 0, capsys.readouterr().err


def test_the_stub_declares_every_field_of_every_group_built_at_run_time():
    with open(config_stub.STUB_PATH, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    declared = {
        node.name: [item.target.id for item in node.body if isinstance(item, ast.AnnAssign)]
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }
    built = {name: [field.name for field in dataclasses.fields(getattr(config, name))] for name in config_stub.GROUPS}
    assert declared == built


def test_a_stale_stub_is_one_line_naming_the_command(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "groups.pyi"
    stale.write_text(config_stub.stub_text().replace("    fedprox:", "    fedproxx:"))
    monkeypatch.setattr(config_stub, "STUB_PATH", str(stale))
    assert config_stub.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of date" in err and "python -m tffpipe.config_stub" in err
    assert config_stub.main([]) == 0
    assert stale.read_text() == config_stub.stub_text()
    assert not os.path.exists(str(stale) + ".tmp")
