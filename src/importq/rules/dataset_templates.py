"""A dataset's template files: its header and one example row, as CSV and as XLSX.

The example row is each column's ``example`` (or a value of its type), so that the file
as downloaded imports as one successful row: a user fills it in rather than starting from
a blank sheet. The CSV is written as the reports are (UTF-8 with a BOM, CRLF), so that
Excel opens it with its accents.
"""

from __future__ import annotations

import csv
import io

from openpyxl import Workbook  # type: ignore[import-untyped]

from importq.rules.datasets import Dataset


def _rows(dataset: Dataset) -> list[list[str]]:
    return [[c.name for c in dataset.columns], [c.example_value() for c in dataset.columns]]


def template_csv(dataset: Dataset) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows(_rows(dataset))
    return text.getvalue().encode("utf-8-sig")


def template_xlsx(dataset: Dataset) -> bytes:
    """One sheet named after the dataset, every cell text (as a user would type it)."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(dataset.name[:31])
    for row in _rows(dataset):
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()
