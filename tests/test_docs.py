"""The documentation: a README of at most 300 lines, a site whose flag reference is generated from the declarations."""

import os
import re

import yaml

from conftest import REPO_ROOT, documentation_pages
from tffpipe import cli
from tffpipe import config
from tffpipe import flag_reference
from tffpipe import settings
from tffpipe import sweep
from tffpipe.tasks import registry as task_registry


def _rows(markdown: str) -> dict[str, list[str]]:
    """Table rows of the reference by their first cell's flag, cells split at unescaped pipes."""
    rows = {}
    for line in markdown.splitlines():
        match = re.match(r"\| `(--[a-z0-9_]+)` \|", line)
        if match:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            assert match.group(1) not in rows, f"{match.group(1)} listed twice"
            rows[match.group(1)] = cells
    return rows


SWEEP_HEADING = "## `python -m tffpipe.sweep`"


def _train_and_sweep_rows():
    train, sweep_part = flag_reference.markdown().split(SWEEP_HEADING)
    return _rows(train), _rows(sweep_part)


def test_the_flag_reference_lists_every_setting_with_its_default_and_resume_rule():
    rows, _ = _train_and_sweep_rows()
    table = settings.by_flag(config.RunConfig)
    for flag, item in table.items():
        cells = rows[f"--{flag}"]
        assert len(cells) == 4, cells
        assert cells[3] == item.spec.resume
        assert item.spec.help.split(".")[0][:40].replace("|", "\\|").replace("<", "&lt;") in cells[2]
        if item.spec.default_text:
            assert cells[1] == item.spec.default_text.replace("|", "\\|")
        elif item.default not in (None, "", ()):
            expected = ",".join(map(str, item.default)) if isinstance(item.default, tuple) else str(item.default)
            assert cells[1] == f"`{expected}`", (flag, cells[1])
    assert rows["--data_dir"][1] == "~/.tff"  # not the machine the site was built on


def test_the_flag_reference_lists_the_launchers_flags_every_built_in_tasks_options_and_the_sweeps():
    rows, sweep_rows = _train_and_sweep_rows()
    assert {f"--{name}" for name in cli.LAUNCHER_FLAGS} <= set(rows)
    for name, entry in task_registry.registered_tasks().items():
        if entry.source == "built-in":
            for option, spec in config.plugin_options("task", name).items():
                assert rows[f"--{name}_{option}"][1] == f"`{spec.default}`"
    sweep_flags = {a.option_strings[-1] for a in sweep._parser()._actions if a.option_strings} - {"--help"}
    assert set(sweep_rows) == sweep_flags
    # Nothing else: every row is one of those.
    settings_flags = {f"--{flag}" for flag in settings.by_flag(config.RunConfig)}
    assert set(rows) - settings_flags - {"--flagfile", "--helpshort", "--helpfull"} == {
        f"--{n}" for n in cli.LAUNCHER_FLAGS
    } | {
        f"--{name}_{option}"
        for name, entry in task_registry.registered_tasks().items()
        if entry.source == "built-in"
        for option in config.plugin_options("task", name)
    }


def test_the_readme_is_at_most_300_lines_and_links_every_page_of_the_site():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert readme.count("\n") <= 300
    pages = [path for path, _ in documentation_pages()[1:] if not path.endswith("index.md")]
    missing = [p for p in pages if f"]({p})" not in readme]
    assert missing == []


def test_every_page_in_docs_is_in_the_sites_navigation_and_the_home_page_takes_the_readmes_guide():
    with open(os.path.join(REPO_ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        assert yaml.safe_load(f)["hooks"] == ["docs/hooks/flag_reference.py"]
    listed = {path for path, _ in documentation_pages()[1:]}
    on_disk = {
        os.path.relpath(os.path.join(folder, name), REPO_ROOT)
        for folder, _, names in os.walk(os.path.join(REPO_ROOT, "docs"))
        for name in names
        if name.endswith(".md")
    }
    assert listed == on_disk
    readme = documentation_pages()[0][1]
    guide = readme.split("<!-- --8<-- [start:guide] -->\n", 1)[1].split("<!-- --8<-- [end:guide] -->", 1)[0]
    assert guide.startswith("## Quick start") and "## Kill it, rerun it" in guide and "## Documentation" not in guide
    assert '--8<-- "README.md:guide"' in dict(documentation_pages())["docs/index.md"]
