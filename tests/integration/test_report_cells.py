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

from importq.pipeline.reports import FORMULA_STARTS
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
