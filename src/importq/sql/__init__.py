"""Named SQL queries, loaded once from the ``*.sql`` files beside this module.

Each query opens with ``-- name: <name>`` and a one-line ``-- <description>``; the
text runs to the next name. Python refers to queries only by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import LiteralString

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load(directory: Path) -> dict[str, LiteralString]:
    found: dict[str, LiteralString] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        parts = _HEADER.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            lines = body.strip().splitlines()
            while lines and lines[0].startswith("--"):
                lines.pop(0)  # the description
            # Queries ship with the package, so they are as trusted as code.
            found[name] = "\n".join(lines).strip().rstrip(";")
    return found


queries: dict[str, LiteralString] = _load(Path(__file__).parent)
