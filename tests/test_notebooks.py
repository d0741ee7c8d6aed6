"""The course holds together: every notebook is listed, linked, executed and runnable in Jupyter.

nbval itself runs the notebooks (they are collected from labs/); this checks their structure.
"""

import json
import re
from pathlib import Path

import pytest

from lablib.catalog import LABS, available
from lablib.scenarios import all_scenarios

ROOT = Path(__file__).resolve().parent.parent
LABS_DIR = ROOT / "labs"
NOTEBOOKS = sorted(LABS_DIR.glob("*.ipynb"))


def cells(path, kind="code"):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def source(cell):
    return "".join(cell["source"])


def test_every_notebook_is_in_the_catalog_and_every_ready_lab_is_linked_from_the_index():
    listed = {lab.notebook for lab in LABS} | {"index.ipynb"}
    assert {p.name for p in NOTEBOOKS} <= listed
    index = "".join(source(c) for c in cells(LABS_DIR / "index.ipynb", "markdown"))
    for lab in available():
        assert f"]({lab.notebook})" in index, f"index.ipynb does not link {lab.notebook}"


def test_every_registered_scenario_has_a_lab():
    assert {s.name for s in all_scenarios()} <= {lab.scenario for lab in available()}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_come_from_one_complete_run(path):
    code = [c for c in cells(path) if source(c).strip()]
    counts = [c["execution_count"] for c in code]
    assert None not in counts, "some code cells were never run: run tools/run_notebooks.py"
    assert counts == sorted(counts), "cells were run out of order"
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_never_call_asyncio_run(path):
    # Jupyter's kernel already runs a loop: asyncio.run() raises there
    assert not any("asyncio.run(" in source(c) for c in cells(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_print_no_times_ports_or_figures(path):
    for cell in cells(path):
        if "NBVAL_CHECK_OUTPUT" not in source(cell):
            continue
        text = json.dumps(cell["outputs"])
        assert "<Figure" not in text and "image/png" not in text
        assert not re.search(r"127\.0\.0\.1:\d+", text)
        assert not re.search(r"\d+\.\d{3} s\b", text)


def test_lab_00_checks_its_key_results():
    checked = [c for c in cells(LABS_DIR / "00_close_basics.ipynb") if "NBVAL_CHECK_OUTPUT" in source(c)]
    assert len(checked) >= 6
