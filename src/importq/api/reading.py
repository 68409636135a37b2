"""How an upload is read beyond its dataset's definition, for an import and its preview
alike: ``mapping`` (a JSON object upload header → dataset column, or the name of one of
the user's saved mappings), ``decimal`` (``comma``: float columns take a decimal comma)
and ``dateFormat`` (date columns read that format, such as ``DD/MM/YYYY``).

Everything is checked before a byte of the body is read: a mapping that is not a JSON
object of strings, a saved mapping of another dataset's, a mapping to a column the
dataset does not have, or a bad date format is ``400``; a saved mapping the user does
not have is ``404``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Query

from importq.errors import Refusal
from importq.ingest.saved_mappings import SavedMapping, saved_mapping
from importq.rules.datasets import (
    Dataset,
    DatasetError,
    check_date_format,
    normalise_header_name,
)
from importq.services import Services

MappingOption = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="How the file's header names the dataset's columns: a JSON object "
        'upload header → dataset column (such as {"Lat": "w3geo:latitude"}), or the name '
        "of one of your saved mappings (GET /api/v1/mappings). The mapping wins over the "
        "columns' names and aliases. A longer mapping is saved (PUT /api/v1/mappings/"
        "{name}) and named here.",
    ),
]
DecimalOption = Annotated[
    Literal["dot", "comma"] | None,
    Query(
        description="The decimal mark of the file's numbers: comma reads 45,123 as 45.123 "
        "(a dot still reads as one; digits may be grouped by spaces). Default: the "
        "dataset's columns'"
    ),
]


def _date_formats() -> list[str]:
    """Every date format there is: DD, MM and YYYY in any order, one separator."""
    found = []
    for order in itertools.permutations(("DD", "MM", "YYYY")):
        for separator in "/.- ":
            with contextlib.suppress(DatasetError):
                found.append(check_date_format(separator.join(order)))
    return found


#: Every date format an upload may name.
DATE_FORMATS = _date_formats()

DateFormatOption = Annotated[
    str | None,
    Query(
        max_length=20,
        description="The format of the file's dates, made of DD, MM and YYYY with one "
        "separator (/ . - or a space), such as DD/MM/YYYY, any case; YYYY-MM-DD is always "
        "read. Default: the dataset's columns'",
        json_schema_extra={"enum": DATE_FORMATS},
    ),
]


@dataclass(frozen=True)
class Reading:
    """An upload's reading options, resolved: the mapping as an object (a saved one's,
    named by ``mapping_name``), the decimal mark and the date format."""

    mapping: dict[str, str] | None = None
    mapping_name: str | None = None
    decimal: str | None = None
    date_format: str | None = None

    def judging(self, definition: Dataset) -> Dataset:
        """``definition`` read so (``400`` for a mapping or a format it cannot take)."""
        try:
            return definition.read_as(self.mapping, self.decimal, self.date_format)
        except DatasetError as error:
            raise Refusal(400, "bad_reading", f"{error}.") from None

    def digested(self) -> list[str]:
        """What the options ask for, for an upload's request digest (empty when none)."""
        asked = []
        if self.mapping is not None:
            asked.append(f"mapping {json.dumps(self.mapping, sort_keys=True)}")
        if self.decimal is not None:
            asked.append(f"decimal {self.decimal}")
        if self.date_format is not None:
            asked.append(f"date format {self.date_format}")
        return asked


def parse_mapping(text: str) -> dict[str, str] | None:
    """A mapping option written as a JSON object (None when ``text`` is not JSON, so a
    saved mapping's name); ``400`` for JSON that is not an object of strings."""
    if not text.lstrip().startswith("{"):
        check_names([text])
        return None
    try:
        found = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise Refusal(400, "bad_mapping", f"mapping is not valid JSON: {error}.") from None
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in found.items()
    ):
        raise Refusal(
            400,
            "bad_mapping",
            "mapping must be a JSON object of upload header names to column names.",
        )
    check_mapping(found)
    return found


def check_names(names: Iterable[str]) -> None:
    """Refuse (400) a mapping's or a mapping name's text that PostgreSQL cannot keep."""
    if any("\x00" in name for name in names):
        raise Refusal(400, "bad_mapping", "A mapping holds no NUL character.")


def check_mapping(mapping: Mapping[str, str]) -> None:
    """Refuse (400) a mapping with an empty header, or one header twice (names are
    compared as an import compares them)."""
    check_names([*mapping, *mapping.values()])
    seen: set[str] = set()
    for header in mapping:
        key = normalise_header_name(header)
        if not key:
            raise Refusal(400, "bad_mapping", "A mapping does not map an empty header.")
        if key in seen:
            raise Refusal(400, "bad_mapping", f"The mapping names the header {header!r} twice.")
        seen.add(key)


async def upload_reading(
    services: Services,
    user_id: int,
    definition: Dataset,
    mapping: str | None,
    decimal: str | None,
    date_format: str | None,
) -> Reading:
    """The reading options of a request, resolved and checked against ``definition``."""
    if date_format is not None:
        try:
            date_format = check_date_format(date_format)
        except DatasetError as error:
            raise Refusal(400, "bad_reading", str(error)) from None
    given = parse_mapping(mapping) if mapping is not None else None
    name = None
    if mapping is not None and given is None:
        saved: SavedMapping | None
        async with services.pool.connection() as conn:
            saved = await saved_mapping(conn, user_id, mapping)
        if saved is None:
            raise Refusal(404, "unknown_mapping", f"You have no saved mapping named {mapping!r}.")
        if saved.dataset != definition.name:
            raise Refusal(
                400,
                "bad_mapping",
                f"Mapping {mapping!r} is for dataset {saved.dataset}, not {definition.name}.",
            )
        given, name = definition.known_mapping(saved.mapping), saved.name
    reading = Reading(given, name, decimal, date_format)
    reading.judging(definition)
    return reading
