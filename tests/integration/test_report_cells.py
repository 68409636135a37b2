"""Report cells as SQL formats them (``importq_report_cell``), against their rule in Python.

The rule (README, "Line numbers in reports"): RFC 4180 quoting; a text cell a
spreadsheet would run as a formula (it starts with = + - @ TAB or CR) gets a leading
``'``; a number in a numeric column stays a number. The success report prints the
validated numbers of a row as they are, without the function: every valid number must be
one it leaves unchanged.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from importq.pipeline.reports import FORMULA_STARTS, staged_failure_record
from importq.pipeline.reports import report_cell as report_cell_sql
from importq.rules.datasets import parse_datasets
from importq.rules.row_rules import NUMBER
from importq.services import Services


def report_cell(value: str | None, numeric: bool) -> str:
    """The rule, in Python."""
    if value is None:
        return ""
    formula = value.startswith(FORMULA_STARTS) and not (numeric and NUMBER.fullmatch(value.strip()))
    prefix = "'" if formula else ""
    if any(c in value for c in '",\n\r'):
        return '"' + prefix + value.replace('"', '""') + '"'
    return prefix + value


def cells() -> list[str | None]:
    rnd = random.Random(20261127)
    alphabet = ['"', ",", "\n", "\r", "\t", " ", "=", "+", "-", "@", ".", "e", "1", "0", "a", "é"]
    alphabet.append("\x01")  # what a record's test joins a row's text cells with
    found: list[str | None] = [None, "", "-1.5", " -1.5 ", "+.5e3", "-", "=1+1", "@x", "\t-2"]
    for _ in range(3_000):
        found.append("".join(rnd.choices(alphabet, k=rnd.randrange(7))))
    return found


async def _in_sql(services: Services, values: list[str | None], numeric: bool) -> list[str]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT importq_report_cell(v, %s) FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, n)"
            " ORDER BY n",
            (numeric, values),
        )
        return [cell for (cell,) in await cursor.fetchall()]


async def test_report_cells_follow_the_rule(services: Services) -> None:
    values = cells()
    for numeric in (False, True):
        formatted = await _in_sql(services, values, numeric)
        expected = [report_cell(value, numeric) for value in values]
        wrong = [
            (value, got, want)
            for value, got, want in zip(values, formatted, expected, strict=True)
            if got != want
        ]
        assert wrong == []
    assert len({report_cell(v, False) != (v or "") for v in values}) == 2, "some cells change"


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.from_regex(NUMBER, fullmatch=True), min_size=1, max_size=50))
async def test_a_valid_number_prints_as_itself(services: Services, numbers: list[str]) -> None:
    """What lets the success report skip the function for a row's validated numbers."""
    assert await _in_sql(services, list(numbers), True) == numbers


MIXED = parse_datasets(
    '[datasets.mixed]\ntable = "mixed_rows"\ndedup_key = ["a"]\n'
    '[[datasets.mixed.columns]]\nname = "a"\nfield = "a"\nrequired = true\n'
    '[[datasets.mixed.columns]]\nname = "x"\nfield = "x"\ntype = "float"\n'
    '[[datasets.mixed.columns]]\nname = "y"\nfield = "y"\ntype = "float"\ndecimal = "comma"\n'
    '[[datasets.mixed.columns]]\nname = "b"\nfield = "b"\n'
)["mixed"]


async def test_a_failure_record_is_its_cells_each_formatted(services: Services) -> None:
    """A rejected row's record tests its text cells at once and takes a short way when
    they are plain. Whichever way a row takes, the record must be the one that formats
    each cell in full: over random rows of text, dot and comma numbers, and a column the
    dataset does not know."""
    header = ["a", "x", "y", "b", "unknown"]
    columns = [MIXED.column(name) for name in header[:4]] + [None]
    rnd = random.Random(20261205)
    values = cells()
    plain = [None, "", "Entrance 1", "a, b", "-12.5", "12,5", "fra", "ES"]
    rows = [
        [rnd.choice(plain if rnd.random() < 0.6 else values) for _ in header] for _ in range(2_000)
    ]
    full = sql.SQL(" || ',' || ").join(
        [
            sql.SQL("line::text"),
            report_cell_sql(sql.Identifier("message"), None),
            *(report_cell_sql(sql.Identifier(f"c{p}"), c) for p, c in enumerate(columns)),
        ]
    )
    async with services.pool.connection() as conn, conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE staged (line int, message text, extra text[], "
            "c0 text, c1 text, c2 text, c3 text, c4 text) ON COMMIT DROP"
        )
        async with conn.cursor().copy(
            "COPY staged (line, message, extra, c0, c1, c2, c3, c4) FROM STDIN"
        ) as copy:
            for line, row in enumerate(rows, start=2):
                extra = ["=x", "y"] if line % 7 == 0 else None
                await copy.write_row((line, rnd.choice(values), extra, *row))
        query = sql.SQL(
            "SELECT {record}, {full} || CASE WHEN extra IS NULL THEN '' "
            "ELSE importq_report_extra(extra) END || E'\\r\\n' FROM staged ORDER BY line"
        ).format(record=staged_failure_record(MIXED, header), full=full)
        pairs = await (await conn.execute(query)).fetchall()
    assert len(pairs) == len(rows)
    assert [pair for pair in pairs if pair[0] != pair[1]] == []
    # Both ways were taken.
    assert any('"' in row[0] or "'" in row[0] for row in pairs)
