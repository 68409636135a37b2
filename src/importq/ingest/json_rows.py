"""Reading a JSON body of the form ``{"data": [{column: value}, …]}``, row by row.

Rows are independent objects, and an object may leave out a field it has no value for.
So the header is every key the rows hold, in the order each first appears, and a key a
row lacks, or holds ``null`` for, is an empty cell (a mandatory column then fails as
missing). A row's line is its index plus 2, as if the header were line 1. A row that is
not an object, or holds a nested value, is staged with a problem.

The body is never decoded whole. :class:`_JsonText` hands json's own decoder one value
at a time, so values keep the json module's meaning (big integers, lone surrogates),
and memory holds one row. The body is read twice: a first pass checks all of it and
collects the header, and the second yields the rows. A value (a row) may take as many
characters as a CSV record within the limits
(:attr:`~importq.ingest.limits.UploadLimits.max_record_chars`); a longer one is refused
with ``413 record_too_long`` while it is read.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator, Mapping
from typing import IO, Any

from importq.errors import Refusal
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload, empty_upload
from importq.rules.row_rules import StagedRow, Value

BLOCK_BYTES = 1 << 20
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_SHAPE = 'The body must be an object {"data": [{column: value}, …]}.'


def _bad_json(detail: str) -> Refusal:
    return Refusal(400, "bad_json", detail)


class _JsonText:
    """The body's text, decoded as it is needed, and json's decoder applied to it.

    The text is the body's encoding as :func:`json.detect_encoding` finds it. At most
    one value and a block of text after it are held.
    """

    def __init__(self, binary: IO[bytes], longest: int) -> None:
        binary.seek(0)
        encoding = json.detect_encoding(binary.read(4))
        binary.seek(0)
        self._binary = binary
        self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        self._longest = longest
        self._eof = False
        self._consumed = 0  # characters dropped before ``text``
        self.text = ""
        self.pos = 0

    def _fill(self, wanted: int) -> None:
        """Make ``wanted`` characters follow ``pos``, unless the body ends first.

        Only then is the text before ``pos`` dropped, so each character is copied a
        bounded number of times however many values the text holds.
        """
        if self._eof or len(self.text) - self.pos >= wanted:
            return
        self.text, self._consumed = self.text[self.pos :], self._consumed + self.pos
        self.pos = 0
        while len(self.text) < wanted and not self._eof:
            block = self._binary.read(max(BLOCK_BYTES, wanted - len(self.text)))
            self._eof = not block
            try:
                self.text += self._decoder.decode(block, final=self._eof)
            except UnicodeDecodeError as error:
                raise _bad_json(
                    f"The body is not valid {error.encoding}: {error.reason}."
                ) from None

    def where(self, position: int) -> str:
        return f"at character {self._consumed + position + 1}"

    def peek(self) -> str:
        """The next character that is not white space; empty at the end of the body."""
        while True:
            match = _SPACE.match(self.text, self.pos)
            assert match is not None
            self.pos = match.end()
            if self.pos < len(self.text) or self._eof:
                return self.text[self.pos : self.pos + 1]
            self._fill(BLOCK_BYTES)

    def take(self, expected: str, what: str) -> str:
        """Step over the next character, which must be one of ``expected``."""
        found = self.peek()
        if not found or found not in expected:
            raise _bad_json(f"The body is not valid JSON: expected {what} {self.where(self.pos)}.")
        self.pos += 1
        return found

    def value(self) -> Any:
        """Decode the next value with json's decoder.

        It is decoded from the text held. A value cut by the end of that text is
        decoded again with more, twice as much each time, so a long value costs linear
        time. Past ``longest`` characters it is refused.
        """
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as error:
                cut = error.pos >= len(self.text) - 64 or error.msg.startswith("Unterminated")
                if self._eof or not cut:
                    raise _bad_json(
                        f"The body is not valid JSON: {error.msg} {self.where(error.pos)}."
                    ) from None
            except (RecursionError, ValueError) as error:
                # Nested too deep for the decoder, or an integer of more digits than
                # Python converts: no row holds either.
                raise _bad_json(
                    f"The body's JSON cannot be read {self.where(self.pos)}: {error}."
                ) from None
            else:
                # A number cut by the end of the text read may go on: 12|34, 1|e+5.
                number = isinstance(value, int | float)
                if self._eof or not number or end < len(self.text) - 2:
                    self.pos = end
                    return value
            held = len(self.text) - self.pos
            if held > self._longest:
                raise Refusal(
                    413,
                    "record_too_long",
                    f"A JSON value {self.where(self.pos)} is longer than {self._longest} "
                    "characters, longer than any row within the limits.",
                    limit=self._longest,
                )
            # Never more than the bound: past it, the value is refused anyway.
            self._fill(min(max(BLOCK_BYTES, 2 * held), self._longest + 1))


def _data_items(binary: IO[bytes], limits: UploadLimits) -> Iterator[Any]:
    """Each value of the body's ``data`` array, after checking the body as JSON.

    Keys other than ``data`` are decoded and ignored, as ``json.load`` would.
    """
    text = _JsonText(binary, limits.max_record_chars)
    if text.peek() != "{":
        raise _bad_json(_SHAPE)
    text.pos += 1
    seen_data = False
    if text.peek() == "}":
        raise _bad_json(_SHAPE)
    while True:
        key = text.value()
        if not isinstance(key, str):
            raise _bad_json("The body is not valid JSON: a key must be a string.")
        text.take(":", "':'")
        if key != "data":
            text.value()
        elif seen_data:
            raise _bad_json('The body holds "data" twice.')
        else:
            seen_data = True
            if text.peek() != "[":
                raise _bad_json(_SHAPE)
            text.pos += 1
            if text.peek() == "]":
                text.pos += 1
            else:
                while True:
                    yield text.value()
                    if text.take(",]", "',' or ']'") == "]":
                        break
        if text.take(",}", "',' or '}'") == "}":
            break
    if text.peek():
        raise _bad_json(f"The body is not valid JSON: extra data {text.where(text.pos)}.")
    if not seen_data:
        raise _bad_json(_SHAPE)


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


def read_json_rows(binary: IO[bytes], *, limits: UploadLimits = UploadLimits()) -> ParsedUpload:
    """Read the rows of a ``{"data": [...]}`` body; the header is the rows' keys.

    The first pass happens here: invalid JSON or another shape is refused with
    ``400 bad_json``, an empty list with ``400 empty_data``, rows that hold no key at
    all with ``400 bad_json``, and more keys than ``max_columns``, more rows than
    ``max_rows`` or a key longer than ``max_cell_chars`` with a 413. The file is left open.
    """
    header: dict[str, None] = {}
    count = 0
    for item in _data_items(binary, limits):
        count += 1
        if count > limits.max_rows:
            raise limits.too_many_rows()
        if not isinstance(item, Mapping):
            continue
        for key in item:
            if key not in header:
                if len(key) > limits.max_cell_chars:
                    raise limits.cell_too_long(count + 1)
                header[key] = None
        if len(header) > limits.max_columns:
            raise limits.too_many_columns(len(header))
    if count == 0:
        raise empty_upload()
    if not header:
        raise _bad_json("No row is an object with at least one column.")
    columns = list(header)

    def rows() -> Iterator[StagedRow]:
        for index, item in enumerate(_data_items(binary, limits)):
            line = index + 2
            if not isinstance(item, Mapping):
                yield StagedRow(line, [], "the row is not an object")
                continue
            values: list[Value] = []
            problems: list[str] = []
            for column in columns:
                value, problem = _json_cell(column, item.get(column))
                if value is not None and len(value) > limits.max_cell_chars:
                    raise limits.cell_too_long(line)
                values.append(value)
                if problem:
                    problems.append(problem)
            yield StagedRow(line, values, "; ".join(problems) or None)

    return ParsedUpload(columns, rows())
