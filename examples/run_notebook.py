"""Execute examples/notebook.ipynb end to end (CI does, so it never rots). Needs nbclient and ipykernel.

    python examples/run_notebook.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main() -> int:
    path = Path(__file__).with_name("notebook.ipynb")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    print(f"{path.name}: {len(notebook.cells)} cells executed, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
