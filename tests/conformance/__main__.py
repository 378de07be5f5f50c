"""``python -m tests.conformance OUT_DIR [AREA ...]``: write the conformance vectors."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from tests.conformance import AREAS


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tests.conformance OUT_DIR [AREA ...]", file=sys.stderr)
        return 2
    out, areas = Path(argv[0]), argv[1:] or list(AREAS)
    out.mkdir(parents=True, exist_ok=True)
    for area in areas:
        try:
            module = importlib.import_module(f"tests.conformance.{area}")
        except ModuleNotFoundError as err:
            if err.name != f"tests.conformance.{area}":
                raise
            continue  # an area not written yet
        data = module.vectors()
        (out / f"{area}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"conformance: {area} -> {out / f'{area}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
