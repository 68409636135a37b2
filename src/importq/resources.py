"""Finds the top-level resource folders (migrations, locales, templates).

A wheel carries them inside the package as ``importq/_resources/<name>``; an editable
install or a source checkout has them at the repository root. One resolver serves both
so no other module guesses paths.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Return the folder ``name`` (``migrations``, ``locales`` or ``templates``)."""
    for candidate in (_PACKAGE_DIR / "_resources" / name, _PACKAGE_DIR.parents[1] / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"importq resource folder {name!r} is missing from the install")
