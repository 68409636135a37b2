"""The package's layout rules: a small root, and one name per idea.

The root of ``importq`` keeps only what every stage of a batch shares; a module that
belongs to a stage goes into that stage's package (ingest, rules, pipeline, delivery…).
No two module or package names may differ only by a suffix or a plural (``delivery`` and
``deliveries``, ``staged`` and ``staging``): each name says what its module owns.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import importq

PACKAGE = Path(importq.__file__).parent
MOST_ROOT_MODULES = 12

# Endings that make a twin of a name: a plural, or another form of the same word.
_ENDINGS = ("ies", "es", "s", "ing", "ed", "er", "ion")


def _stem(name: str) -> str:
    for ending in _ENDINGS:
        if name.endswith(ending) and len(name) - len(ending) >= 3:
            base = name[: -len(ending)]
            return base + "y" if ending == "ies" else base
    return name


def _names() -> set[str]:
    """Every module's and sub-package's name in the package, but ``__init__``."""
    modules = {path.stem for path in PACKAGE.rglob("*.py") if path.stem != "__init__"}
    packages = {path.parent.name for path in PACKAGE.rglob("*/__init__.py")}
    return modules | packages


def twins(names: set[str]) -> list[tuple[str, str]]:
    """The pairs of names that differ only by one of ``_ENDINGS``."""
    return [(a, b) for a, b in itertools.combinations(sorted(names), 2) if _stem(a) == _stem(b)]


def test_the_root_holds_at_most_twelve_modules() -> None:
    root = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(root) <= MOST_ROOT_MODULES, root


def test_no_two_names_differ_only_by_a_suffix_or_a_plural() -> None:
    assert twins(_names()) == []


def test_the_twin_rule_catches_the_old_names() -> None:
    assert twins({"delivery", "deliveries"}) == [("deliveries", "delivery")]
    assert twins({"staged", "staging"}) == [("staged", "staging")]
    assert twins({"chunking", "chunks"}) == [("chunking", "chunks")]
    assert twins({"schema", "schemas"}) == [("schema", "schemas")]
    assert twins({"staged_table", "staging", "job_json", "jobs"}) == []
