"""Generated rows of the built-in ``entrances`` dataset for the row-rule properties: ids
and authors from a small set (so keys repeat), some made invalid on purpose (a bad
latitude, an empty mandatory value, a half-filled conditional group) and some carrying
a reading ``problem``. Hypothesis strategies; no database."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from hypothesis import strategies as st

from helpers import HEADER, entrance
from importq.rules.datasets import Dataset, load_datasets
from importq.rules.row_rules import StagedRow, Value

DATASET: Dataset = load_datasets()["entrances"]

LABEL = "rdfs:label"
DESC_TITLE = "karstlink:hasDescriptionDocument/dct:title"
DESC_CREATOR = "karstlink:hasDescriptionDocument/dct:creator"
DESC_LANGUAGE = "karstlink:hasDescriptionDocument/dc:language"
ACCESS_DESC = "karstlink:hasAccessDocument/dct:description"
ACCESS_LANGUAGE = "karstlink:hasAccessDocument/dc:language"
ACCESS_CREATOR = "karstlink:hasAccessDocument/dct:creator"
FULL_HEADER = [
    *HEADER,
    LABEL,
    DESC_TITLE,
    DESC_CREATOR,
    DESC_LANGUAGE,
    ACCESS_DESC,
    ACCESS_LANGUAGE,
    ACCESS_CREATOR,
]
ID, AUTHOR, LATITUDE = "id", "dct:rights/cc:attributionName", "w3geo:latitude"
READING_PROBLEM = "expected 15 fields, found 14"

Key = tuple[str, ...]


@dataclass(frozen=True)
class Case:
    """A generated row and what the test knows about it."""

    row: StagedRow
    kind: str  # "valid" | "invalid" | "problem"
    key: Key  # the intended key, normalised by the test (not by row_rules)
    latitude: str


def key_hash(key: Key | None, line: int) -> int:
    """A stable signed 64-bit hash standing in for staging's SQL one (rows of one key
    share it; a keyless row hashes its line): chunking only needs such a hash."""
    material = b"\x00line:%d" % line if key is None else "\x1f".join(key).encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big", signed=True)


def positions_of(header: list[str]) -> dict[str, int]:
    match = DATASET.match_header(header)
    assert not match.missing and not match.unknown and not match.duplicated
    return dict(match.positions)


def values_in(header: list[str], row: Mapping[str, Value]) -> list[Value]:
    return [row.get(name, "") for name in header]


padding = st.sampled_from(["", "", " ", "  ", "\t"])
ids = st.sampled_from(["a", "b", "c"])
authors = st.sampled_from(["FFS", "Other"])
valid_latitudes = st.sampled_from(["45.5", "-90", "90", " 12 ", "0", "1e1", "-.5"])
invalid_latitudes = st.sampled_from(["91", "-90.01", "north", "1e3", "nan", "", "  "])


@st.composite
def padded(draw: st.DrawFn, core: st.SearchStrategy[str]) -> str:
    return draw(padding) + draw(core) + draw(padding)


@st.composite
def valid_extras(draw: st.DrawFn) -> dict[str, Value]:
    extras: dict[str, Value] = {}
    if draw(st.booleans()):
        extras[LABEL] = draw(st.sampled_from(["Gouffre", "  ", ""]))
    if draw(st.booleans()):
        extras.update({DESC_TITLE: "Topo", DESC_CREATOR: "Jean", DESC_LANGUAGE: "fra"})
    if draw(st.booleans()):
        extras.update({ACCESS_DESC: "Par le nord", ACCESS_LANGUAGE: "eng", ACCESS_CREATOR: "Ann"})
    return extras


@st.composite
def broken(draw: st.DrawFn, row: dict[str, Value]) -> tuple[dict[str, Value], str]:
    """Make a row fail validation; also returns its latitude."""
    how = draw(st.sampled_from(["latitude", "mandatory", "conditional"]))
    row = dict(row)
    if how == "latitude":
        row[LATITUDE] = draw(invalid_latitudes)
    elif how == "mandatory":
        column = draw(st.sampled_from(DATASET.mandatory_columns))
        row[column] = draw(st.sampled_from(["", "   ", None]))
    else:
        title, companions = draw(
            st.sampled_from(
                [(DESC_TITLE, (DESC_CREATOR, DESC_LANGUAGE)), (ACCESS_DESC, (ACCESS_LANGUAGE,))]
            )
        )
        row[title] = "Something"
        for companion in companions:
            row[companion] = draw(st.sampled_from(["", "  ", None]))
    return row, str(row[LATITUDE])


@st.composite
def cases(draw: st.DrawFn, header: list[str], min_size: int = 0) -> list[Case]:
    """Rows in increasing line order (with gaps, as blank CSV records leave)."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=min_size, max_size=60))
    line = 1
    result: list[Case] = []
    for gap in gaps:
        line += gap
        ident, author = draw(padded(ids)), draw(padded(authors))
        latitude = draw(valid_latitudes)
        row: dict[str, Value] = {
            **entrance(ident, author=author, latitude=latitude),
            **draw(valid_extras()),
        }
        kind = draw(st.sampled_from(["valid", "valid", "valid", "invalid", "problem"]))
        if kind == "invalid" or (kind == "problem" and draw(st.booleans())):
            row, latitude = draw(broken(row))
        problem = READING_PROBLEM if kind == "problem" else None
        staged = StagedRow(line, values_in(header, row), problem)
        result.append(Case(staged, kind, (ident.strip(), author.strip()), latitude))
    return result


@st.composite
def scenarios(draw: st.DrawFn, min_size: int = 0) -> tuple[dict[str, int], list[Case]]:
    header = list(draw(st.permutations(FULL_HEADER)))
    return positions_of(header), draw(cases(header, min_size))
