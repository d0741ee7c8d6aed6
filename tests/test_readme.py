"""The README's promises: CI runs its test command, its knob table is the code's."""

import re
from pathlib import Path

from lablib.roles.server import SERVER_KNOBS
from lablib.scenarios import all_scenarios

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    command = re.search(r"^(python3 -m venv .*pytest)$", README, re.M)
    assert command, "the README lost its test command"
    assert command.group(1) in (ROOT / ".ci" / "run").read_text()


def test_the_readme_opens_the_labs_and_links_binder_to_the_index():
    assert re.search(r"^python3 -m venv .*/jupyter lab (--allow-root )?labs/index\.ipynb$", README, re.M)
    assert "urlpath=lab/tree/labs/index.ipynb" in README


def test_every_knob_is_in_the_readme_knob_table():
    knobs = [k for s in all_scenarios() for k in s.knobs] + list(SERVER_KNOBS)
    for knob in knobs:
        assert f"| `{knob.name}` |" in README, f"{knob.name} missing from the README's knob table"
        assert knob.models == "" or knob.models in README
