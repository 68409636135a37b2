"""The row rules as the service applies them (screen and dedup in SQL, the check of the
suspect rows in Python) against their model, ``rules_model.decide``.

Property test on real PostgreSQL: generated rows (keys that repeat with padding, values
valid and not, numbers the screen must leave to Python, reading problems) are staged,
every chunk is processed, and each row's outcome and message, and the rows inserted,
must be exactly what the model decides for the whole file, some of its keys being in the
table already.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from conftest import new_user
from helpers import row_results
from importq.ingest.chunk_bounds import ChunkSizing
from importq.ingest.parsed_upload import ParsedUpload
from importq.ingest.staged_table import trimmed
from importq.ingest.staging import BatchRequest, stage_batch
from importq.pipeline.chunk_processing import process_chunk
from importq.pipeline.target_tables import _value
from importq.rules.datasets import Dataset, load_datasets, parse_datasets
from importq.rules.row_rules import StagedRow, converter
from importq.rules.sql_screen import Screen
from importq.services import Services
from row_scenarios import LATITUDE, scenarios
from rules_model import decide, normalise

DATASET: Dataset = load_datasets()["entrances"]

# Values the screen must pass or leave to Python, valid or not by the rules.
EDGE_LATITUDES = [
    "+5",
    "5.",
    "0000000000000000000000000000000045",  # over 30 characters: Python decides
    "90.00000000000000000001",  # a double rounds it to 90
    "90.0000000001",
    "1e1",
    "-1E-400",
    "1e400",
    "٣",  # an Arabic-Indic digit: not a number here
    "Infinity",
    " -90 ",
]
EDGE_COUNTRIES = ["FR", "fr", "FRA", " ES ", "E", "ÉS"]


@st.composite
def edged(draw: st.DrawFn) -> tuple[list[str], list[StagedRow]]:
    """A header and rows in line order, some with an edge latitude or country code."""
    positions, cases = draw(scenarios(min_size=1))
    header = [""] * len(positions)
    for name, position in positions.items():
        header[position] = name
    rows = []
    for case in cases:
        values = list(case.row.values)
        if draw(st.integers(0, 3)) == 0:
            values[positions[LATITUDE]] = draw(st.sampled_from(EDGE_LATITUDES))
        if draw(st.integers(0, 3)) == 0:
            values[positions["gn:countryCode"]] = draw(st.sampled_from(EDGE_COUNTRIES))
        rows.append(StagedRow(case.row.line, values, case.row.problem))
    return header, rows


async def _stage(services: Services, header: list[str], rows: list[StagedRow]) -> uuid.UUID:
    user_id = (await new_user(services, f"rules-{uuid.uuid4().hex[:8]}"))[0]
    request = BatchRequest(dataset=DATASET, initiator_id=user_id, format="csv")
    upload = ParsedUpload(header=header, rows=iter(rows))
    async with services.pool.connection() as conn:
        staged = await stage_batch(
            conn,
            request,
            upload,
            # several chunks, a key's rows still in one
            sizing=ChunkSizing(4, services.settings.max_chunks),
            defer_chunks=services.queue.defer_chunks,
        )
        cursor = await conn.execute(
            "SELECT chunk_no FROM chunks WHERE batch_id = %s ORDER BY chunk_no DESC",
            (staged.batch_id,),
        )
        for (chunk_no,) in await cursor.fetchall():  # in any order: each is on its own
            assert await process_chunk(
                conn, services.queue, services.datasets, staged.batch_id, chunk_no, slice_rows=2
            )
    return staged.batch_id


def _winner_keys(header: list[str], rows: list[StagedRow]) -> list[tuple[str, ...]]:
    positions = dict(DATASET.match_header(header).positions)
    return sorted({winner.key for winner in decide(DATASET, positions, rows)[0]})


def _expected(
    header: list[str], rows: list[StagedRow], stored: set[tuple[str, ...]]
) -> Iterator[tuple[int, str, str | None, tuple[str, ...] | None]]:
    """The model's outcome of every row, ``stored`` being the keys in the table before."""
    positions = dict(DATASET.match_header(header).positions)
    winners, rejected = decide(DATASET, positions, rows)
    for winner in winners:
        if winner.key in stored:
            yield winner.line, "duplicate", "already exists", None
        else:
            yield winner.line, "inserted", None, winner.key
    for row in rejected:
        yield row.line, row.outcome, row.message, None


async def _store_keys(services: Services, keys: set[tuple[str, ...]]) -> None:
    """Rows of an earlier import: the target table holds these keys, hashed as staging
    hashes them."""
    async with services.pool.connection() as conn:
        for source_id, attribution in keys:
            await conn.execute(
                "INSERT INTO entrances (key_hash, source_id, attribution_name)"
                " VALUES (hashtextextended(%s || E'\\x1f' || %s, 0), %s, %s)",
                (source_id, attribution, source_id, attribution),
            )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edged(), st.data())
async def test_the_service_decides_every_row_as_the_model_does(
    services: Services, case: tuple[list[str], list[StagedRow]], data: st.DataObject
) -> None:
    header, rows = case
    winner_keys = _winner_keys(header, rows)
    stored = data.draw(st.sets(st.sampled_from(winner_keys)) if winner_keys else st.just(set()))
    async with services.pool.connection() as conn:
        await conn.execute("TRUNCATE entrances")  # each example starts from its own table
    await _store_keys(services, stored)
    batch_id = await _stage(services, header, rows)
    async with services.pool.connection() as conn:
        results = await row_results(conn, batch_id)
        cursor = await conn.execute(
            "SELECT imported_line, source_id, attribution_name FROM entrances"
            " WHERE imported_batch = %s ORDER BY imported_line",
            (batch_id,),
        )
        inserted = await cursor.fetchall()
    expected = sorted(_expected(header, rows, stored))
    assert results == [(line, outcome, message) for line, outcome, message, _ in expected]
    assert inserted == [(line, *key) for line, _, _, key in expected if key is not None]


def test_the_edge_values_are_valid_and_invalid_alike() -> None:
    """Among the edge values some pass the rules and some do not, so the property sees
    the screen leave valid rows to Python as well as invalid ones."""
    for name, values in ((LATITUDE, EDGE_LATITUDES), ("gn:countryCode", EDGE_COUNTRIES)):
        convert = converter(DATASET.column(name))
        assert convert is not None
        assert {convert(normalise(text))[1] is None for text in values} == {True, False}


SCREENED = parse_datasets(
    """
[datasets.probe]
dedup_key = ["key"]
[[datasets.probe.columns]]
name = "key"
field = "key"
required = true
[[datasets.probe.columns]]
name = "count"
field = "count"
type = "int"
min = -5
max = 1e19  # beyond a bigint: the length alone keeps 19 digits out
[[datasets.probe.columns]]
name = "depth"
field = "depth"
type = "float"
min = -0.5
max = 1e300
[[datasets.probe.columns]]
name = "weight"
field = "weight"
type = "float"
min = -9007199254740995  # whole numbers no double equals: the screen steps inside
max = 9223372036854775807
[[datasets.probe.columns]]
name = "code"
field = "code"
min_length = 2
max_length = 3
[[datasets.probe.columns]]
name = "ref"
field = "ref"
pattern = "[A-Z]{2}-[0-9]+"
[[datasets.probe.columns]]
name = "kind"
field = "kind"
type = "enum"
values = ["pit", "cave"]
[[datasets.probe.columns]]
name = "open"
field = "open"
type = "bool"
[[datasets.probe.columns]]
name = "found"
field = "found"
type = "date"
[[datasets.probe.columns]]
name = "seen"
field = "seen"
type = "timestamp"
[[datasets.probe.columns]]
name = "share"
field = "share"
type = "float"
decimal = "comma"
min = -0.5
max = 1e12
[[datasets.probe.columns]]
name = "dated"
field = "dated"
type = "date"
formats = ["DD/MM/YYYY", "YYYY.MM.DD", "MM DD YYYY"]
"""
)["probe"]

# Per column: values of every shape, valid and not.
PROBES = {
    "count": [
        "0",
        "-5",
        "-6",
        "+17",
        "999999999999999999",
        "9999999999999999999",
        "1000000000000000000",
        "1000000000000000001",
        "1e3",
        "1.0",
        "٣",
        " 7 ",
        "x",
    ],
    "depth": [
        "0",
        "-0.5",
        "-0.51",
        "1e300",
        "1e301",
        "5.",
        ".5",
        "+.5",
        "-1e-400",
        "1e-310",
        "nan",
        "inf",
        "0" * 40,
        "1" * 31,
        "1_000",
        "٣",
    ],
    "weight": [
        "9223372036854775808",
        "9223372036854775807",
        "9223372036854774784",
        "-9007199254740995",
        "-9007199254740996",
        "-9007199254740994",
        "0",
    ],
    "code": ["ab", "abc", "a", "abcd", "é\u0301", "  ab  ", "日本"],
    "ref": ["AB-1", "ab-1", "AB-", "AB-12x", "ÀB-1"],
    "kind": ["pit", "cave", "Pit", "pits", "cave "],
    "open": ["true", "T", "yes", "0", "maybe", "ｙes", "yeſ", "FALSE"],
    "found": ["2024-02-29", "2023-02-29", "20240229", "2024-W09-4", "24-1-1"],
    "seen": ["2024-02-29T10:00:00", "2024-02-29 10:00:00+02:00", "2024-02-29", "noon"],
    "share": [
        "45,123",
        "45.123",
        "-0,5",
        "-0,51",
        ",5",
        "5,",
        "1 234,5",
        "-0\u00a0000,5",
        "1\u202f234\u202f567,891",
        "999 999 999 999,9",
        "1 000 000 000 000",
        "1.234,5",
        "1,2,3",
        "12 34,5",
        "1,5e3",
        "1,5e999",
        "0,1e-400",
        "nan",
    ],
    "dated": [
        "3/4/2026",
        "03/04/2026",
        "31/12/1999",
        "29/02/2024",
        "29/02/2026",
        "31/04/2026",
        "2026.4.3",
        "2026.12.31",
        "12 31 2026",
        "1 2 0999",
        "2026-04-03",
        "20260403",
        "2026-4-3",
        "3-4-2026",
        "25/13/2026",
    ],
}


async def test_the_screen_passes_no_value_its_column_refuses(services: Services) -> None:
    positions = {column.name: p for p, column in enumerate(SCREENED.columns)}
    screen = Screen.of(SCREENED, positions)
    cells = sql.SQL(", ").join(
        sql.SQL("{}::text AS {}").format(sql.Placeholder(f"v{p}"), trimmed(p))
        for p in positions.values()
    )
    query = sql.SQL("SELECT coalesce({}, false) FROM (SELECT {}) AS s").format(screen.passes, cells)
    passed: dict[str, set[str]] = {}
    async with services.pool.connection() as conn:
        for name, values in PROBES.items():
            column = SCREENED.column(name)
            convert = converter(column)
            assert convert is not None
            for value in values:
                text = normalise(value)
                row = {f"v{p}": "k" for p in positions.values()} | {f"v{positions[name]}": text}
                for other in PROBES:  # every other column empty, which each allows
                    if other != name:
                        row[f"v{positions[other]}"] = ""
                judged = screen.bad_values([(p, row[f"v{p}"]) for p in screen.judged])
                cursor = await conn.execute(query, row | judged)
                (passes,) = await cursor.fetchone() or (None,)
                valid = convert(text)[1] is None
                assert not passes or valid, (name, value)
                if passes:
                    passed.setdefault(name, set()).add(value)
    # The screen is not a wall: plain valid values of every column get through.
    assert passed["count"] >= {"0", "-5", "+17", "999999999999999999"}
    assert passed["depth"] >= {"0", "-0.5", "5.", ".5", "+.5"}
    assert passed["weight"] >= {"9223372036854774784", "-9007199254740994", "0"}
    assert passed["code"] >= {"ab", "abc", "  ab  ", "日本"}  # 6 bytes, 2 characters
    assert {"AB-1"} <= passed["ref"] and {"pit", "cave"} <= passed["kind"]
    assert passed["open"] >= {"true", "T", "0", "FALSE"} and "2024-02-29" in passed["found"]
    assert passed["share"] >= {"45,123", "45.123", "1 234,5", "1\u202f234\u202f567,891"}
    assert passed["dated"] >= {"3/4/2026", "2026.4.3", "12 31 2026", "2026-04-03"}


async def test_the_sql_cast_writes_the_converters_value(services: Services) -> None:
    """Every value the rules accept is written, by ``_value``, as its converter reads it:
    local formats (a decimal comma, grouped digits, declared date formats) included."""
    positions = {column.name: p for p, column in enumerate(SCREENED.columns)}
    cells = sql.SQL(", ").join(
        sql.SQL("{}::text AS {}").format(sql.Placeholder(f"v{p}"), trimmed(p))
        for p in positions.values()
    )
    written = 0
    async with services.pool.connection() as conn:
        for name, values in PROBES.items():
            column = SCREENED.column(name)
            convert = converter(column)
            assert convert is not None
            query = sql.SQL("SELECT {} FROM (SELECT {}) AS s").format(
                _value(column, positions), cells
            )
            for value in values:
                expected, problem = convert(normalise(value))
                if problem is not None:
                    continue
                row = {f"v{p}": "" for p in positions.values()} | {
                    f"v{positions[name]}": normalise(value)
                }
                cursor = await conn.execute(query, row)
                assert await cursor.fetchone() == (expected,), (name, value)
                written += 1
    assert written > 40
