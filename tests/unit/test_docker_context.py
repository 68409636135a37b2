"""The Docker build context (``.dockerignore``, read as Docker reads it): it holds every
path ``deploy/Dockerfile`` copies, and none of the checkout's bulk (the virtual
environment, .git, caches, benchmark data, tests)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) for each line, in order. As in Docker's matcher, ``*``
    and ``?`` stay within a path segment and ``**`` spans any number of them."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exception, re.compile(regex)))
    return rules


def _sent(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``path`` (relative to the root) is in the context: the last rule matching
    it or a folder above it decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exception, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            excluded = not exception
    return not excluded


def _copied() -> list[str]:
    """The sources of the Dockerfile's COPY lines."""
    sources = []
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


def test_the_context_holds_what_the_dockerfile_copies() -> None:
    rules = _rules()
    copied = _copied()
    assert {"pyproject.toml", "README.md", "src", "migrations", "locales"} <= set(copied)
    for source in copied:
        found = ROOT / source
        files = [found] if found.is_file() else [p for p in found.rglob("*") if p.is_file()]
        kept = [
            path.relative_to(ROOT).as_posix()
            for path in files
            if "__pycache__" not in path.parts and path.suffix not in (".pyc", ".mo")
        ]
        assert kept, source
        assert [path for path in kept if not _sent(path, rules)] == [], source


def test_the_checkout_s_bulk_stays_out() -> None:
    rules = _rules()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".cache/test-pg/PG_VERSION",
        ".mypy_cache/3.11/importq/cli.data.json",
        ".hypothesis/examples/x",
        "bench-data/entrances-10M.csv",
        "tests/conftest.py",
        "docs/benchmarks.md",
        "scripts/bench.py",
        "src/importq/__pycache__/cli.cpython-311.pyc",
        "locales/de/LC_MESSAGES/importq.mo",
    ):
        assert not _sent(path, rules), path
