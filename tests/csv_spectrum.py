"""The csv-spectrum conformance corpus (npm ``csv-spectrum``, installed by ``scripts/test``
into ``.cache/node``): where it is and how a case is read."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECTRUM_VERSION = "2.0.0"  # the version scripts/test installs
SPECTRUM = ROOT / ".cache" / "node" / "node_modules" / "csv-spectrum"
SPECTRUM_CASES = [
    "comma_in_quotes",
    "empty",
    "empty_crlf",
    "escaped_quotes",
    "json",
    "location_coordinates",
    "newlines",
    "newlines_crlf",
    "quotes_and_newlines",
    "simple",
    "simple_crlf",
    "utf8",
]


def spectrum_case(root: Path, name: str) -> tuple[bytes, list[dict[str, str]]]:
    """A case's CSV bytes and its expected rows, with the corpus's own known defects
    in ``location_coordinates`` corrected (both open upstream):
    its JSON is one object, not a list of one (max-mapper/csv-spectrum#22), and has
    the phone number 1234567890 where the CSV has 2095257564 (#20)."""
    data = (root / "csvs" / f"{name}.csv").read_bytes()
    expected = json.loads((root / "json" / f"{name}.json").read_text(encoding="utf-8"))
    if name == "location_coordinates":
        assert isinstance(expected, dict) and expected["Contact Phone Number"] == "1234567890"
        expected = [{**expected, "Contact Phone Number": "2095257564"}]
    assert isinstance(expected, list) and expected
    return data, expected
