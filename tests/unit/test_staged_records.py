"""The staged records: cells padded or cut to the header, what PostgreSQL cannot keep
cleaned and named as the row's problem, whichever reader gave the row."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from importq.ingest.staged_records import staged_records, storable
from importq.rules.row_rules import StagedRow, Value

# Text with the characters that matter: NUL, a lone surrogate, non-ASCII, plain.
_TEXT = st.text(st.sampled_from(["a", " ", "é", "\x00", "\ud800", "\udfff", "😀"]), max_size=4)
_VALUE = st.none() | _TEXT
_ROW = st.builds(
    StagedRow,
    st.integers(2, 10**6),
    st.lists(_VALUE, max_size=6),
    st.none() | st.sampled_from(["expected 3 fields, found 5", "column \x00 bad"]),
)


def _record_cell_by_cell(row: StagedRow, width: int) -> tuple[Any, ...]:
    """The record as the rules say it, one cell at a time: the oracle."""
    values: list[Value] = [*row.values, *[None] * (width - len(row.values))]
    cells, extra = values[:width], values[width:] or None
    problem = row.problem
    texts = [value for value in values if value]
    if any("\x00" in text for text in texts):
        reason = "a value contains a NUL character"
    elif any(any(0xD800 <= ord(c) <= 0xDFFF for c in text) for text in texts):
        reason = "a value is not valid Unicode text"
    else:
        reason = None
    if reason is not None:
        cleaned = [storable(value) if value else value for value in values]
        cells, extra = cleaned[:width], cleaned[width:] or None
        problem = problem or reason
    return (row.line, problem and storable(problem), extra, *cells)


@given(st.lists(_ROW, max_size=5), st.integers(1, 5))
def test_each_record_is_what_the_rules_say_cell_by_cell(rows: list[StagedRow], width: int) -> None:
    assert list(staged_records(rows, width)) == [_record_cell_by_cell(r, width) for r in rows]


def test_a_row_of_the_headers_width_keeps_its_cells() -> None:
    row = StagedRow(2, ["a", None, "c"], None)
    assert list(staged_records([row], 3)) == [(2, None, None, "a", None, "c")]
