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


def test_the_readme_knob_table_is_what_the_code_prints():
    import subprocess
    import sys

    table = subprocess.run([sys.executable, "-m", "lablib", "knobs", "--markdown"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert table in README, "README's knob table is stale: paste `python -m lablib knobs --markdown`"
    for knob in [k for s in all_scenarios() for k in s.knobs] + list(SERVER_KNOBS):
        assert f"| `{knob.name}` |" in table
