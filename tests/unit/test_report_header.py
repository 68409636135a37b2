"""The reports' header row comes from the upload, and is as formula-safe as its cells."""

from __future__ import annotations

import csv
from pathlib import Path

from importq.pipeline.reports import ReportLayout, ReportWriter
from importq.rules.datasets import load_datasets


def test_a_header_a_spreadsheet_would_run_is_written_as_text(tmp_path: Path) -> None:
    dataset = load_datasets()["entrances"]
    uploaded = ["id", '=HYPERLINK("http://evil.example","x")', "+1", "@SUM(A1)", "plain"]
    writer = ReportWriter(tmp_path, ReportLayout.for_batch(dataset, uploaded))
    writer.add([("failure", "2,oops\r\n", 1)])
    path = writer.close()["failures"]
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "line",
        "message",
        "id",
        '\'=HYPERLINK("http://evil.example","x")',
        "'+1",
        "'@SUM(A1)",
        "plain",
    ]
