"""The clean-CSV path's byte scanning: where a file is cut in halves, and which blocks
are not clean (no database)."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import csv_text, quoted_entrances
from importq.ingest.clean_csv import CsvSource, NotClean, _last_record_end, _record_end_after
from importq.ingest.limits import UploadLimits


def test_halves_cut_at_a_record_and_count_the_records_before_it() -> None:
    body = csv_text(quoted_entrances()).encode()
    source = CsvSource(io.BytesIO(body), body.index(b"\n") + 1, ",", UploadLimits())
    halves = source.halves(block_size=97)  # blocks that cut quoted cells
    assert halves is not None
    cut, records = halves
    first = list(csv.reader(io.StringIO(body[source.start : cut].decode(), newline="")))
    assert len(first) == records and 20 < records < 45
    assert (
        b"".join(source.blocks(97, stop=cut)) + b"".join(source.blocks(97, start=cut))
        == (body[source.start :])
    )


def test_a_line_holding_only_the_end_of_data_mark_is_seen_at_any_block_edge() -> None:
    """PostgreSQL before 18 stops reading at a line that is just \\. (importq does not):
    such a file is never given to its CSV reader, wherever the line falls."""
    for ending in (b"\\.\n", b"\\.\r\n", b"\\."):
        body = b"id,x\n" + b"a,1\n" * 5 + ending + (b"" if ending == b"\\." else b"b,2\n")
        source = CsvSource(io.BytesIO(body), 5, ",", UploadLimits())
        for block_size in (1, 4, 8, 9, 13, 1 << 20):  # \\. first, inside and last in a block
            with pytest.raises(NotClean, match="only"):
                list(source.blocks(block_size))


def _record_end_after_by_counting(data: bytes, offset: int, quoted: bool) -> int | None:
    """The rule, stated plainly: the first line feed at or after ``offset`` with an even
    number of quotes before it (odd when ``data`` starts inside quotes)."""
    for end in range(offset, len(data)):
        if data[end : end + 1] == b"\n" and (data.count(b'"', 0, end) + quoted) % 2 == 0:
            return end + 1
    return None


def _last_record_end_by_counting(data: bytes, quoted: bool) -> int:
    for end in range(len(data) - 1, -1, -1):
        if data[end : end + 1] == b"\n" and (data.count(b'"', 0, end) + quoted) % 2 == 0:
            return end + 1
    return 0


CSV_BYTES = st.binary(max_size=200).map(lambda raw: bytes(b'a,"\n'[b % 4] for b in raw))


@given(CSV_BYTES, st.integers(min_value=0, max_value=220), st.booleans())
def test_a_record_end_is_found_in_one_pass_as_the_rule_says(
    data: bytes, offset: int, quoted: bool
) -> None:
    assert _record_end_after(data, offset, quoted) == _record_end_after_by_counting(
        data, offset, quoted
    )
    assert _last_record_end(data, quoted) == _last_record_end_by_counting(data, quoted)


@given(CSV_BYTES, st.integers(min_value=1, max_value=40))
def test_blocks_cut_at_the_same_record_ends_whatever_the_block_size(
    data: bytes, block_size: int
) -> None:
    """The quote state carried from block to block finds the ends one pass finds."""
    source = CsvSource(io.BytesIO(data), 0, ",", UploadLimits())
    try:
        whole = list(source.blocks(1 << 20))
    except NotClean:
        with pytest.raises(NotClean):
            list(source.blocks(block_size))
        return
    cut = list(source.blocks(block_size))
    assert b"".join(cut) == b"".join(whole) == data
    for block in cut[:-1]:
        assert _last_record_end_by_counting(block, False) == len(block)


CELLS = st.text(alphabet='a,"\n', max_size=12).map(lambda t: '"' + t.replace('"', '""') + '"')
RECORDS = st.lists(st.lists(st.one_of(CELLS, st.just("b")), min_size=2, max_size=3), max_size=8)


@given(RECORDS, st.integers(min_value=1, max_value=40))
def test_clean_records_with_quoted_line_feeds_stay_clean_at_any_block_size(
    records: list[list[str]], block_size: int
) -> None:
    """RFC 4180 records, quoted cells holding line feeds and quotes, cut at any block
    size: every block ends where a record does, and none is taken for unclean."""
    data = "".join(",".join(record) + "\n" for record in records).encode()
    source = CsvSource(io.BytesIO(data), 0, ",", UploadLimits())
    blocks = list(source.blocks(block_size))
    assert b"".join(blocks) == data
    for block in blocks:
        assert _last_record_end_by_counting(block, False) == len(block)
