"""Row rules: validate and coerce a staged row, and decide which rows of a key win.

Pure functions over plain data (no I/O), shared by the chunk worker and the tests.

Invariants:
- validation comes first: a row that fails validation gets a message naming the column
  and the problem, and does not claim its key;
- among valid rows of one key (in line order) the first wins, the later ones are
  ``duplicate of line N``;
- keys are normalised once, by :func:`normalise`, for hashing and for dedup alike.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from importq.datasets import Column, ColumnType, Dataset

Value = str | None
Coerced = str | int | float | bool | date | datetime | None

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def normalise(value: Value) -> str:
    """Surrounding whitespace trimmed, otherwise exact; ``None`` reads as empty."""
    return "" if value is None else value.strip()


def row_key(values: Sequence[Value], key_positions: Sequence[int | None]) -> tuple[str, ...] | None:
    """The normalised dedup key of a row, or ``None`` when any part of it is empty."""
    key = tuple(
        normalise(values[p]) if p is not None and p < len(values) else "" for p in key_positions
    )
    return None if "" in key else key


def key_hash(key: tuple[str, ...] | None, line: int) -> int:
    """A stable signed 64-bit hash of a key; a keyless row hashes its line (a group of one)."""
    material = b"\x00line:%d" % line if key is None else "\x1f".join(key).encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big", signed=True)


def _check_number(column: Column, text: str) -> tuple[Coerced, str | None]:
    if column.type is ColumnType.INT:
        if not _INT.fullmatch(text):
            return None, f'"{text}" is not a whole number'
        number: float = int(text)
    else:
        if not _FLOAT.fullmatch(text):
            return None, f'"{text}" is not a number'
        number = float(text)
        if not math.isfinite(number):
            return None, f'"{text}" is out of range'
    if column.min is not None and number < column.min:
        return None, f"{text} is below {_plain(column.min)}"
    if column.max is not None and number > column.max:
        return None, f"{text} is above {_plain(column.max)}"
    return number, None


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _check_text(column: Column, text: str) -> str | None:
    if column.min_length is not None and len(text) < column.min_length:
        return f"is shorter than {column.min_length} characters"
    if column.max_length is not None and len(text) > column.max_length:
        return f"is longer than {column.max_length} characters"
    if column.pattern is not None and not column.pattern.fullmatch(text):
        return f'"{text}" is not {column.pattern_description or "in the expected form"}'
    if column.type is ColumnType.ENUM and text not in column.values:
        return f'"{text}" is not one of {", ".join(column.values)}'
    return None


def coerce(column: Column, text: str) -> tuple[Coerced, str | None]:
    """Turn a non-empty normalised cell into the column's type: (value, problem)."""
    if column.type.is_numeric:
        return _check_number(column, text)
    if column.type is ColumnType.BOOL:
        lowered = text.casefold()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE, None
        return None, f'"{text}" is not true or false'
    if column.type is ColumnType.DATE:
        try:
            return date.fromisoformat(text), None
        except ValueError:
            return None, f'"{text}" is not a date (YYYY-MM-DD)'
    if column.type is ColumnType.TIMESTAMP:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None, f'"{text}" is not a timestamp (ISO 8601)'
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), None
    return text, _check_text(column, text)


def check_row(
    dataset: Dataset, positions: Mapping[str, int], values: Sequence[Value]
) -> tuple[tuple[Coerced, ...], list[str]]:
    """Validate one row: its coerced record (dataset column order) and its problems."""
    cells = {
        c.name: normalise(values[positions[c.name]]) if c.name in positions else ""
        for c in dataset.columns
    }
    record: list[Coerced] = []
    problems: list[str] = []
    for column in dataset.columns:
        text = cells[column.name]
        if not text:
            record.append(None)
            if column.required:
                problems.append(f"{column.name}: missing")
            elif column.required_if is not None and cells[column.required_if]:
                problems.append(f"{column.name}: missing (required with {column.required_if})")
            continue
        value, problem = coerce(column, text)
        record.append(value)
        if problem is not None:
            problems.append(f"{column.name}: {problem}")
    return tuple(record), problems


@dataclass(frozen=True)
class StagedRow:
    """A row as staged: its line, its uploaded values, and a reading problem if any."""

    line: int
    values: Sequence[Value]
    problem: str | None = None


@dataclass(frozen=True)
class Winner:
    """A valid row that claims its key: to be inserted unless the key is already stored."""

    line: int
    key: tuple[str, ...]
    record: tuple[Coerced, ...]


@dataclass(frozen=True)
class Rejected:
    """A row that will not be inserted, with the reason its report shows."""

    line: int
    outcome: str  # "duplicate" | "failure"
    message: str


def decide(
    dataset: Dataset, positions: Mapping[str, int], rows: Iterable[StagedRow]
) -> tuple[list[Winner], list[Rejected]]:
    """Apply the row rules to rows given in line order (one chunk's, or any subset)."""
    key_positions = [positions.get(name) for name in dataset.dedup_key]
    first_line: dict[tuple[str, ...], int] = {}
    winners: list[Winner] = []
    rejected: list[Rejected] = []
    previous = 0
    for row in rows:
        if row.line <= previous:
            raise ValueError("rows must come in increasing line order")
        previous = row.line
        if row.problem is not None:
            rejected.append(Rejected(row.line, "failure", row.problem))
            continue
        record, problems = check_row(dataset, positions, row.values)
        if problems:
            rejected.append(Rejected(row.line, "failure", "; ".join(problems)))
            continue
        key = row_key(row.values, key_positions)
        assert key is not None, "a valid row has every key column"
        if key in first_line:
            rejected.append(Rejected(row.line, "duplicate", f"duplicate of line {first_line[key]}"))
            continue
        first_line[key] = row.line
        winners.append(Winner(row.line, key, record))
    return winners, rejected
