"""Rewrite each phase notebook's parameters cell from the phase's Params dataclass.

The dataclass is the schema; the notebook repeats it because papermill injects values below
that cell. Run after changing a phase's parameters:
    .venv/bin/python scripts/sync_notebook_parameters.py
"""

from __future__ import annotations

import json
import sys

from mateperf import phases


def main() -> int:
    for phase in phases.available_phases():  # a recorded phase (live) has no notebook
        path = phases.require_notebook(phase)
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                source = phases.parameters_cell(phase)
                cell["source"] = [line + "\n" for line in source.splitlines()]
                cell["source"][-1] = cell["source"][-1].rstrip("\n")
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path.name}: {len(phases.defaults(phase))} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
