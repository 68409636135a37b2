"""The staged table's records of the rows importq's readers give, pure.

A record is ``(line, problem, extra, c0 … c<width-1>)``, the columns of the binary COPY
``copy_staged_rows``, of the types :func:`record_types`.
Invariants:

* The cells are the row's first ``width`` values, padded with ``None``. The values past
  ``width`` are ``extra``, which is ``None`` for a row no wider than the header.
* Every text is one PostgreSQL can keep. A row holding a NUL character or invalid
  Unicode (a lone surrogate, which a JSON body may hold) has it cleaned, and is given
  the problem that says so unless it had one already: it becomes a failure, reported
  with what could be kept.

Staging builds these records in the API's process, and the XLSX reading process
(:mod:`importq.ingest.xlsx_process`) builds the same ones in its own: the two paths
stage identical rows because both build them here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from importq.rules.row_rules import StagedRow, Value


def record_types(width: int) -> list[str]:
    """The PostgreSQL types of a record's columns, for a binary COPY."""
    return ["int4", "text", "text[]", *["text"] * width]


def storable(text: str) -> str:
    """``text`` as PostgreSQL can keep it: without NUL, a lone surrogate (which a JSON
    body may hold) replaced."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode()


def staged_records(rows: Iterable[StagedRow], width: int) -> Iterator[tuple[Any, ...]]:
    """The records of ``rows`` for a staged table of ``width`` cells, as the module
    docstring describes."""
    padding: tuple[Value, ...] = (None,) * width
    for line, values, problem in rows:
        count = len(values)
        extra: list[Value] | None = None
        if count == width:  # most rows: the readers pad a row to the header's width
            cells: Sequence[Value] = values
        elif count < width:
            cells = [*values, *padding[count:]]
        else:
            cells, extra = values[:width], list(values[width:])
        # One test over the row's joined text costs less than one per cell.
        text = "".join(filter(None, values))
        if "\x00" in text or not (text.isascii() or _is_unicode(text)):
            cleaned = [storable(cell) if cell else cell for cell in values]
            cleaned.extend(padding[count:])
            cells, extra = cleaned[:width], cleaned[width:] or None
            reason = (
                "a value contains a NUL character"
                if "\x00" in text
                else "a value is not valid Unicode text"
            )
            problem = problem or reason
        # A problem may quote a column's name, as the upload spelled it.
        yield (line, problem and storable(problem), extra, *cells)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` has no lone surrogate, so that it encodes as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
