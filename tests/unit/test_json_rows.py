"""JSON bodies are read value by value, and read as ``json.load`` would read them whole."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from importq.errors import Refusal
from importq.ingest import json_rows
from importq.ingest.json_rows import read_json_rows
from importq.ingest.limits import UploadLimits


def read(body: bytes | str, limits: UploadLimits = UploadLimits()) -> list[tuple[Any, ...]]:
    raw = body.encode() if isinstance(body, str) else body
    upload = read_json_rows(io.BytesIO(raw), limits=limits)
    return [tuple(upload.header), *((r.line, r.values, r.problem) for r in upload.rows)]


def refusal(body: bytes | str, limits: UploadLimits = UploadLimits()) -> Refusal:
    with pytest.raises(Refusal) as caught:
        read(body, limits)
    return caught.value


def read_whole(rows: list[Any]) -> list[tuple[Any, ...]]:
    """The rule, stated on the whole document: keys in order of first appearance."""
    header = list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))
    out: list[tuple[Any, ...]] = [tuple(header)]
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            out.append((index + 2, [], "the row is not an object"))
            continue
        values: list[str | None] = []
        problems: list[str] = []
        for column in header:
            value = row.get(column)
            if isinstance(value, dict | list):
                values.append(None)
                problems.append(f"{column}: nested values are not accepted")
            elif isinstance(value, bool):
                values.append("true" if value else "false")
            elif value is None or isinstance(value, str):
                values.append(value)
            else:
                values.append(json.dumps(value))
        out.append((index + 2, values, "; ".join(problems) or None))
    return out


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
ROWS = st.lists(
    st.one_of(
        st.dictionaries(
            st.sampled_from(["a", "b", "é", "c d", ""]),
            st.one_of(SCALARS, st.lists(SCALARS, max_size=2)),
            max_size=4,
        ),
        SCALARS,
    ),
    min_size=1,
    max_size=12,
).filter(lambda rows: any(isinstance(r, dict) and r for r in rows))


@given(ROWS, st.integers(min_value=1, max_value=17), st.booleans())
def test_rows_read_value_by_value_are_the_rows_of_the_whole_document(
    rows: list[Any], block: int, ascii_only: bool
) -> None:
    body = json.dumps(
        {"before": [1, {"x": "]"}], "data": rows, "after": "}"}, ensure_ascii=ascii_only
    )
    original = json_rows.BLOCK_BYTES
    json_rows.BLOCK_BYTES = block  # values cut at every place by the end of what is read
    try:
        assert read(body) == read_whole(rows)
    finally:
        json_rows.BLOCK_BYTES = original


def test_values_keep_the_json_modules_meaning() -> None:
    body = '{"data": [{"n": 123456789012345678901234567890, "s": "a\\ud800b", "f": 1e400}]}'
    assert read(body)[1] == (2, ["123456789012345678901234567890", "a\ud800b", "Infinity"], None)


def test_a_byte_order_mark_and_utf16_are_read() -> None:
    body = '{"data": [{"nom": "Élodie"}]}'
    for raw in (b"\xef\xbb\xbf" + body.encode(), body.encode("utf-16")):
        assert read(raw) == [("nom",), (2, ["Élodie"], None)]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("", "must be an object"),
        ("[]", "must be an object"),
        ('{"rows": [{"a": 1}]}', "must be an object"),
        ('{"data": {"a": 1}}', "must be an object"),
        ('{"data": [{"a": 1}], "data": []}', "twice"),
        ('{"data": [{"a": 1}]} x', "extra data"),
        ('{"data": [{"a": 1}]', "expected ',' or '}'"),
        ('{"data": [{"a": 1}', "expected ',' or ']'"),
        ('{"data": [{"a": 1}, {"a": tru}]}', "Expecting value at character 27"),
        ('{"data": [{"a": "unterminated}]}', "Unterminated string"),
        ('{1: 2, "data": []}', "a key must be a string"),
        (b'{"data": [{"a": "\xff"}]}', "not valid utf-8"),
        ('{"data": [{}, 3]}', "No row is an object"),
    ],
)
def test_a_body_that_is_not_rows_is_400_saying_why(body: str | bytes, words: str) -> None:
    bad = refusal(body)
    assert (bad.status, bad.code) == (400, "bad_json")
    assert words in bad.detail


def test_an_empty_list_is_empty_data() -> None:
    assert refusal('{"data": []}').code == "empty_data"


def test_a_row_past_the_limits_is_refused_while_it_is_read() -> None:
    limits = UploadLimits(max_columns=2, max_cell_chars=5)
    longer_than_a_block = "x" * (3 * json_rows.BLOCK_BYTES)
    bad = refusal('{"data": [{"a": "' + longer_than_a_block + '"}]}', limits)
    assert (bad.status, bad.code, bad.extra["limit"]) == (413, "record_too_long", 28)
    wide = refusal('{"data": [{"a": 1}, {"b": 1, "c": 2}]}', limits)
    assert (wide.status, wide.code) == (413, "too_many_columns")
    long_cell = refusal('{"data": [{"a": "123456"}]}', limits)
    assert (long_cell.code, long_cell.extra["line"]) == ("cell_too_long", 2)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{"data": [' + "[" * 100_000 + "]" * 100_000 + "]}", "recursion"),
        ('{"data": [{"a": ' + "9" * 5_000 + "}]}", "digits"),
    ],
)
def test_json_the_decoder_cannot_take_is_400_not_a_crash(body: str, words: str) -> None:
    bad = refusal(body)
    assert (bad.status, bad.code) == (400, "bad_json")
    assert words in bad.detail


def test_rows_and_keys_past_the_limits_are_refused_in_the_first_pass() -> None:
    rows = refusal('{"data": [{"a": 1}, {"a": 2}, {"a": 3}]}', UploadLimits(max_rows=2))
    assert (rows.status, rows.code) == (413, "too_many_rows")
    key = refusal('{"data": [{"a": 1}, {"' + "k" * 6 + '": 2}]}', UploadLimits(max_cell_chars=5))
    assert (key.code, key.extra["line"]) == ("cell_too_long", 3)


def test_many_rows_are_read_in_time_linear_in_their_number() -> None:
    """Each row is decoded from the text held: a row does not copy the text after it.
    Counted, not timed: the characters copied while trimming stay within the body's."""
    body = json.dumps({"data": [{"a": n, "b": "x" * 20} for n in range(50_000)]}).encode()
    copied = 0
    original = json_rows._JsonText._fill

    def counting(self: json_rows._JsonText, wanted: int) -> None:
        nonlocal copied
        before = len(self.text) - self.pos
        original(self, wanted)
        if self.pos == 0:
            copied += before

    json_rows._JsonText._fill = counting  # type: ignore[method-assign]
    try:
        assert len(read(body)) == 50_001
    finally:
        json_rows._JsonText._fill = original  # type: ignore[method-assign]
    assert copied <= 2 * len(body)
