"""Reading a JSON body of the form ``{"data": [{column: value}, …]}``.

The first row's keys are the header. A row's line is its index plus 2, as if the header
were line 1. A key that a row lacks is an empty cell. A row that is not an object, or
that holds a null, a nested value or a key the first row lacks, is staged with a problem.
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
        return None, f"{column}: null is not a value"
    if isinstance(value, dict | list):
        return None, f"{column}: nested values are not accepted"
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, str):
        return value, None
    return json.dumps(value), None


def read_json_rows(data: Sequence[Any], *, limits: UploadLimits = UploadLimits()) -> ParsedUpload:
    """Read the rows of a ``{"data": [...]}`` body. The first row's keys are the header.

    An empty list is refused with ``400 empty_data``. A first row that is not an object
    with at least one key is refused with ``400 bad_json``.
    """
    if not data:
        raise empty_upload()
    first = data[0]
    if not isinstance(first, Mapping) or not first:
        raise Refusal(400, "bad_json", "data[0] must be an object with at least one column.")
    header = [str(k) for k in first]
    known = set(header)

    def rows() -> Iterator[StagedRow]:
        for index, item in enumerate(data):
            line = index + 2
            if not isinstance(item, Mapping):
                yield StagedRow(line, [], "the row is not an object")
                continue
            values: list[Value] = []
            problems: list[str] = []
            for column in header:
                if column not in item:
                    values.append(None)
                    continue
                value, problem = _json_cell(column, item[column])
                if value is not None and len(value) > limits.max_cell_chars:
                    raise limits.cell_too_long(line)
                values.append(value)
                if problem:
                    problems.append(problem)
            extra = [str(k) for k in item if k not in known]
            if extra:
                problems.append(f"columns not in the first row: {', '.join(extra)}")
            yield StagedRow(line, values, "; ".join(problems) or None)

    return ParsedUpload(header, rows())
