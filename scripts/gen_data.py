"""Generate an entrances CSV in Grottocenter's format, deterministically.

    python scripts/gen_data.py ROWS OUT.csv|OUT.xlsx [--duplicates 0.05] [--failures 0.03]
                               [--seed 1]

About ``--duplicates`` of the rows repeat an earlier row's key and ``--failures`` of them
carry a validation error (a latitude out of range, a bad country code, a missing column).
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = [
    "id",
    "rdf:type",
    "dct:rights/cc:attributionName",
    "dct:rights/karstlink:licenseType",
    "gn:countryCode",
    "w3geo:latitude",
    "w3geo:longitude",
    "rdfs:label",
    "rdfs:label/dc:language",
    "dct:description",
]
COUNTRIES = ["FR", "ES", "IT", "CH", "AT", "DE", "BE", "SI", "HR", "GR"]
AUTHORS = ["Grottocenter", "FFS", "UIS", "Club Alpin", "Speleo Club"]


def entrance_rows(
    count: int, *, duplicates: float = 0.05, failures: float = 0.03, seed: int = 1
) -> Iterator[list[str | float]]:
    """``count`` data rows; latitude and longitude are numbers, the rest text."""
    rng = random.Random(seed)
    for number in range(1, count + 1):
        entrance = number
        if number > 10 and rng.random() < duplicates:
            entrance = rng.randrange(1, number)
        latitude = round(rng.uniform(-89.9, 89.9), 6)
        country = COUNTRIES[entrance % len(COUNTRIES)]
        label = f"Entrance {entrance}"
        if rng.random() < failures:
            kind = rng.randrange(3)
            if kind == 0:
                latitude = round(rng.uniform(90.5, 120), 4)
            elif kind == 1:
                country = "FRA"
            else:
                label = ""  # rdfs:label is optional: blank the language below instead
        yield [
            f"ent-{entrance}",
            "karstlink:UndergroundCavity",
            AUTHORS[entrance % len(AUTHORS)],
            "CC-BY-SA",
            country,
            latitude,
            round(rng.uniform(-179.9, 179.9), 6),
            label,
            "fra" if label else "",
            f"Generated entrance number {number}, with a description of moderate length.",
        ]


def generate(path: Path, count: int, **options: Any) -> None:
    """Write ``count`` data rows to ``path``: CSV, or XLSX when the name ends in .xlsx."""
    rows = entrance_rows(count, **options)
    if path.suffix == ".xlsx":
        from openpyxl import Workbook

        book = Workbook(write_only=True)
        sheet = book.create_sheet("entrances")
        sheet.append(HEADER)
        for row in rows:
            sheet.append(row)
        book.save(path)
        return
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rows", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--duplicates", type=float, default=0.05)
    parser.add_argument("--failures", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generate(
        args.out, args.rows, duplicates=args.duplicates, failures=args.failures, seed=args.seed
    )


if __name__ == "__main__":
    main()
