"""The row rules as a plain Python model: the specification the pipeline is held to.

The service applies them in SQL and Python together (a screen, a check of the rows it
does not pass, then the first line of each key wins in SQL); tests run rows through the
service and compare every outcome with :func:`decide`, and the property tests pin the
model's own rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from importq.rules.datasets import Dataset
from importq.rules.row_rules import Coerced, RowChecker, StagedRow, Value


def normalise(value: Value) -> str:
    """Surrounding whitespace trimmed, otherwise exact; ``None`` reads as empty."""
    return "" if value is None else value.strip()


def row_key(values: Sequence[Value], key_positions: Sequence[int | None]) -> tuple[str, ...] | None:
    """The normalised dedup key of a row, or ``None`` when any part of it is empty."""
    width = len(values)
    key = []
    for position in key_positions:
        raw = values[position] if position is not None and position < width else None
        part = raw.strip() if raw else ""
        if not part:
            return None
        key.append(part)
    return tuple(key)


class Winner(NamedTuple):
    """A valid row that claims its key: to be inserted unless the key is already stored."""

    line: int
    key: tuple[str, ...]
    record: tuple[Coerced, ...]


class Rejected(NamedTuple):
    """A row that will not be inserted, with the reason its report shows."""

    line: int
    outcome: str  # "duplicate" | "failure"
    message: str


class Decider:
    """Applies the row rules to one chunk's rows, fed in line order in any number of
    slices: the first valid line of each key is remembered across slices."""

    def __init__(self, dataset: Dataset, positions: Mapping[str, int]) -> None:
        self._key_positions = [positions.get(name) for name in dataset.dedup_key]
        self._checker = RowChecker(dataset, positions)
        self._first_line: dict[tuple[str, ...], int] = {}
        self._previous = 0

    def decide(self, rows: Sequence[StagedRow]) -> tuple[list[Winner], list[Rejected]]:
        for row in rows:
            if row.line <= self._previous:
                raise ValueError("rows must come in increasing line order")
            self._previous = row.line
        first_line = self._first_line
        winners: list[Winner] = []
        rejected: list[Rejected] = []
        for row, (record, message) in zip(rows, self._checker.verdicts(rows), strict=True):
            if record is None:
                assert message is not None
                rejected.append(Rejected(row.line, "failure", message))
                continue
            key = row_key(row.values, self._key_positions)
            assert key is not None, "a valid row has every key column"
            if key in first_line:
                message = f"duplicate of line {first_line[key]}"
                rejected.append(Rejected(row.line, "duplicate", message))
                continue
            first_line[key] = row.line
            winners.append(Winner(row.line, key, record))
        return winners, rejected


def decide(
    dataset: Dataset, positions: Mapping[str, int], rows: Iterable[StagedRow]
) -> tuple[list[Winner], list[Rejected]]:
    """Apply the row rules to rows given in line order (one chunk's, or any subset)."""
    return Decider(dataset, positions).decide(list(rows))
