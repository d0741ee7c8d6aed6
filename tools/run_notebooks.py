"""Execute notebooks in place, so the outputs they store are the real outputs of a run.

    python tools/run_notebooks.py                 # every notebook in labs/
    python tools/run_notebooks.py labs/00_close_basics.ipynb

Run it with the project's pinned environment (the README's setup) after changing a lab or a
dependency bound, then commit the notebooks. Cells run in the notebook's folder, with a
deadline per cell; a cell that fails stops the run and nothing is written.

Not covered: widget state (forms show as "widget" until a kernel runs them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 600


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:  # keep diffs small: no per-run ids or timing metadata
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)
    print(f"executed {path.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or sorted((ROOT / "labs").glob("*.ipynb"))
    for path in paths:
        execute(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
