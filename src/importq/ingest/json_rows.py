"""Reading a JSON body of the form ``{"data": [{column: value}, …]}``.

Rows are independent objects, and an object may leave out a field it has no value for.
So the header is every key the rows hold, in the order each first appears, and a key a
row lacks, or holds ``null`` for, is an empty cell (a mandatory column then fails as
missing). A row's line is its index plus 2, as if the header were line 1. A row that is
not an object, or holds a nested value, is staged with a problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from importq.errors import Refusal
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload, empty_upload
from importq.rules.row_rules import StagedRow, Value


def _json_cell(column: str, value: Any) -> tuple[Value, str | None]:
    if value is None:
        return None, None
    if isinstance(value, dict | list):
        return None, f"{column}: nested values are not accepted"
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, str):
        return value, None
    return json.dumps(value), None


def read_json_rows(data: Sequence[Any], *, limits: UploadLimits = UploadLimits()) -> ParsedUpload:
    """Read the rows of a ``{"data": [...]}`` body; the header is the rows' keys.

    An empty list is refused with ``400 empty_data``, and rows that hold no key at all
    with ``400 bad_json``.
    """
    if not data:
        raise empty_upload()
    header = list(dict.fromkeys(key for item in data if isinstance(item, Mapping) for key in item))
    if not header:
        raise Refusal(400, "bad_json", "No row is an object with at least one column.")

    def rows() -> Iterator[StagedRow]:
        for index, item in enumerate(data):
            line = index + 2
            if not isinstance(item, Mapping):
                yield StagedRow(line, [], "the row is not an object")
                continue
            values: list[Value] = []
            problems: list[str] = []
            for column in header:
                value, problem = _json_cell(column, item.get(column))
                if value is not None and len(value) > limits.max_cell_chars:
                    raise limits.cell_too_long(line)
                values.append(value)
                if problem:
                    problems.append(problem)
            yield StagedRow(line, values, "; ".join(problems) or None)

    return ParsedUpload(header, rows())
