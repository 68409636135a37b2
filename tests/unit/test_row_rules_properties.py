"""Property and example tests of the row rules' model (``rules_model.decide``) with the
built-in ``entrances`` dataset.

Pure functions, no database. Rows are entrances whose ids and authors come from a small
set (so keys repeat), some made invalid on purpose (a bad latitude, an empty mandatory
value, a half-filled conditional group) and some carrying a reading ``problem``.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from helpers import HEADER, entrance
from importq.ingest.chunk_bounds import chunk_bounds, chunk_of
from importq.rules.datasets import DatasetError, parse_datasets
from importq.rules.row_rules import StagedRow, Value
from row_scenarios import (
    ACCESS_CREATOR,
    ACCESS_DESC,
    ACCESS_LANGUAGE,
    AUTHOR,
    DATASET,
    DESC_CREATOR,
    DESC_LANGUAGE,
    DESC_TITLE,
    FULL_HEADER,
    ID,
    LABEL,
    LATITUDE,
    READING_PROBLEM,
    Case,
    Key,
    authors,
    key_hash,
    padding,
    positions_of,
    scenarios,
    values_in,
)
from rules_model import Rejected, Winner, decide, normalise, row_key

PROPERTIES = settings(max_examples=200, deadline=None)


def run(positions: dict[str, int], rows: list[Case]) -> tuple[list[Winner], list[Rejected]]:
    return decide(DATASET, positions, [c.row for c in rows])


def outcomes(
    winners: list[Winner], rejected: list[Rejected]
) -> dict[int, tuple[str, str | None, Key | None]]:
    """line → (outcome, message, key); asserts no line has two outcomes."""
    found: dict[int, tuple[str, str | None, Key | None]] = {}
    for w in winners:
        assert w.line not in found
        found[w.line] = ("success", None, w.key)
    for r in rejected:
        assert r.line not in found
        found[r.line] = (r.outcome, r.message, None)
    return found


# --- properties ------------------------------------------------------------------------


@PROPERTIES
@given(scenarios())
def test_every_row_gets_exactly_one_outcome(scenario: tuple[dict[str, int], list[Case]]) -> None:
    positions, rows = scenario
    winners, rejected = run(positions, rows)
    lines = sorted([w.line for w in winners] + [r.line for r in rejected])
    assert lines == [c.row.line for c in rows]
    assert all(r.outcome in ("duplicate", "failure") for r in rejected)


@PROPERTIES
@given(scenarios())
def test_the_first_valid_row_of_a_key_wins(scenario: tuple[dict[str, int], list[Case]]) -> None:
    positions, rows = scenario
    found = outcomes(*run(positions, rows))
    first: dict[Key, int] = {}
    for case in rows:
        line = case.row.line
        if case.kind != "valid":
            assert found[line][0] == "failure", (case, found[line])
            continue
        if case.key in first:
            assert found[line] == ("duplicate", f"duplicate of line {first[case.key]}", None)
        else:
            first[case.key] = line
            assert found[line] == ("success", None, case.key)


@PROPERTIES
@given(scenarios())
def test_a_failing_row_never_claims_its_key(scenario: tuple[dict[str, int], list[Case]]) -> None:
    positions, rows = scenario
    winners, rejected = run(positions, rows)
    failed = {r.line for r in rejected if r.outcome == "failure"}
    claimed = {int(r.message.rsplit(" ", 1)[1]) for r in rejected if r.outcome == "duplicate"}
    assert not claimed & failed
    assert claimed <= {w.line for w in winners}
    # Each key with a valid row has exactly one winner: its first valid row, whatever
    # failing rows of that key came before it.
    valid_lines: dict[Key, list[int]] = defaultdict(list)
    for case in rows:
        if case.kind == "valid":
            valid_lines[case.key].append(case.row.line)
    assert {w.key: w.line for w in winners} == {k: v[0] for k, v in valid_lines.items()}
    assert len(winners) == len(valid_lines)


@PROPERTIES
@given(scenarios())
def test_rows_with_a_problem_fail_with_that_message(
    scenario: tuple[dict[str, int], list[Case]],
) -> None:
    positions, rows = scenario
    found = outcomes(*run(positions, rows))
    for case in rows:
        if case.row.problem is not None:
            assert found[case.row.line] == ("failure", case.row.problem, None)
        else:
            assert found[case.row.line][1] != READING_PROBLEM


@PROPERTIES
@given(scenarios())
def test_winners_carry_their_coerced_record(scenario: tuple[dict[str, int], list[Case]]) -> None:
    positions, rows = scenario
    winners, _ = run(positions, rows)
    by_line = {c.row.line: c for c in rows}
    names = [c.name for c in DATASET.columns]
    for winner in winners:
        case = by_line[winner.line]
        record = dict(zip(names, winner.record, strict=True))
        assert (record[ID], record[AUTHOR]) == case.key
        assert record[LATITUDE] == float(case.latitude)
        assert all(not isinstance(v, str) or v == v.strip() for v in record.values())


@PROPERTIES
@given(scenarios(min_size=2), st.data())
def test_rows_out_of_line_order_are_refused(
    scenario: tuple[dict[str, int], list[Case]], data: st.DataObject
) -> None:
    positions, rows = scenario
    staged = [c.row for c in rows]
    i = data.draw(st.integers(min_value=1, max_value=len(staged) - 1))
    j = data.draw(st.integers(min_value=0, max_value=i - 1))
    if data.draw(st.booleans()):
        staged[i], staged[j] = staged[j], staged[i]  # a later line before an earlier one
    else:
        staged[i] = StagedRow(staged[j].line, staged[i].values, staged[i].problem)  # a line twice
    with pytest.raises(ValueError, match="increasing line order"):
        decide(DATASET, positions, staged)


@PROPERTIES
@given(scenarios(), st.integers(min_value=1, max_value=8), st.randoms(use_true_random=False))
def test_deciding_chunk_by_chunk_equals_deciding_the_whole(
    scenario: tuple[dict[str, int], list[Case]], size: int, rnd: random.Random
) -> None:
    """Affinity chunking makes the row rules chunk-local (rows grouped as staging groups
    them: by normalised key, a row without a whole key or with a problem alone)."""
    positions, rows = scenario
    key_positions = [positions.get(name) for name in DATASET.dedup_key]
    staged = [c.row for c in rows]
    hashes = [
        key_hash(None if r.problem else row_key(r.values, key_positions), r.line) for r in staged
    ]
    bounds = chunk_bounds(sorted(hashes), size)
    per_chunk: dict[int, list[StagedRow]] = defaultdict(list)
    for row, value in zip(staged, hashes, strict=True):
        per_chunk[chunk_of(value, bounds)].append(row)
    order = list(per_chunk)
    rnd.shuffle(order)
    winners: list[Winner] = []
    rejected: list[Rejected] = []
    for k in order:
        chunk_winners, chunk_rejected = decide(DATASET, positions, per_chunk[k])
        winners += chunk_winners
        rejected += chunk_rejected
    assert outcomes(winners, rejected) == outcomes(*decide(DATASET, positions, staged))


@PROPERTIES
@given(
    st.lists(st.tuples(st.sampled_from(["a", "A", "b"]), padding, padding, authors), max_size=30),
    st.permutations(FULL_HEADER),
)
def test_keys_are_trimmed_but_otherwise_exact(
    parts: list[tuple[str, str, str, str]], header: list[str]
) -> None:
    header = list(header)
    positions = positions_of(header)
    key_positions = [positions[name] for name in DATASET.dedup_key]
    rows = [
        StagedRow(line, values_in(header, entrance(before + core + after, author=author)))
        for line, (core, before, after, author) in enumerate(parts, start=2)
    ]
    winners, _ = decide(DATASET, positions, rows)
    assert [w.key for w in winners] == list(dict.fromkeys((core, a) for core, _, _, a in parts))
    for row, (core, _, _, author) in zip(rows, parts, strict=True):
        assert row_key(row.values, key_positions) == (core, author)


def test_key_normalisation_examples() -> None:
    assert normalise(" a ") == normalise("a") == normalise("\ta\n") == "a"
    assert normalise("A") != normalise("a")
    assert normalise("a  b") == "a  b"
    assert normalise(None) == ""
    # A key is its normalised parts; a row without every part has none (staging then
    # hashes its line, so it is a group of one).
    assert row_key([" a ", "FFS"], [0, 1]) == row_key(["a", "FFS\t"], [0, 1]) == ("a", "FFS")
    assert row_key(["A", "FFS"], [0, 1]) != row_key(["a", "FFS"], [0, 1])
    assert row_key(["FFS", "a"], [1, 0]) == ("a", "FFS")
    for keyless in (["  ", "FFS"], [None, "FFS"], ["a"]):
        assert row_key(keyless, [0, 1]) is None, keyless
    assert row_key(["a", "FFS"], [0, None]) is None
    header = list(HEADER)
    positions = positions_of(header)
    rows = [
        StagedRow(2, values_in(header, entrance(" a "))),
        StagedRow(3, values_in(header, entrance("a"))),
        StagedRow(4, values_in(header, entrance("A"))),
        StagedRow(5, values_in(header, entrance("a", author=" FFS\t"))),
    ]
    winners, rejected = decide(DATASET, positions, rows)
    assert [(w.line, w.key) for w in winners] == [(2, ("a", "FFS")), (4, ("A", "FFS"))]
    assert rejected == [
        Rejected(3, "duplicate", "duplicate of line 2"),
        Rejected(5, "duplicate", "duplicate of line 2"),
    ]


def test_rows_out_of_line_order_examples() -> None:
    positions = positions_of(list(HEADER))
    row = values_in(list(HEADER), entrance("a"))
    with pytest.raises(ValueError, match="increasing line order"):
        decide(DATASET, positions, [StagedRow(3, row), StagedRow(2, row)])
    with pytest.raises(ValueError, match="increasing line order"):
        decide(DATASET, positions, [StagedRow(2, row), StagedRow(2, row)])
    assert decide(DATASET, positions, []) == ([], [])


# --- messages --------------------------------------------------------------------------


def decide_one(**changes: Value) -> Winner | Rejected:
    """The outcome of one entrance with some columns changed (full header, CSV order)."""
    row: dict[str, Value] = {**entrance("m1"), **changes}
    header = FULL_HEADER
    winners, rejected = decide(
        DATASET, positions_of(header), [StagedRow(2, values_in(header, row))]
    )
    assert len(winners) + len(rejected) == 1
    outcome: Winner | Rejected = winners[0] if winners else rejected[0]
    return outcome


def failure(message: str) -> Rejected:
    return Rejected(2, "failure", message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({LATITUDE: "91"}, "w3geo:latitude: 91 is above 90"),
        ({LATITUDE: "-90.5"}, "w3geo:latitude: -90.5 is below -90"),
        ({"w3geo:longitude": "-181"}, "w3geo:longitude: -181 is below -180"),
        ({"w3geo:longitude": "180.01"}, "w3geo:longitude: 180.01 is above 180"),
        ({LATITUDE: "north"}, 'w3geo:latitude: "north" is not a number'),
        ({LATITUDE: "=1+1"}, 'w3geo:latitude: "=1+1" is not a number'),
        ({LATITUDE: "nan"}, 'w3geo:latitude: "nan" is not a number'),
        ({LATITUDE: "1e999"}, 'w3geo:latitude: "1e999" is out of range'),
        # Too small for a double: not zero, and PostgreSQL would refuse to store it.
        ({LATITUDE: "-1E-400"}, 'w3geo:latitude: "-1E-400" is out of range'),
        ({"gn:countryCode": "FRA"}, 'gn:countryCode: "FRA" is not two letters'),
        ({"gn:countryCode": "F1"}, 'gn:countryCode: "F1" is not two letters'),
        ({LATITUDE: ""}, "w3geo:latitude: missing"),
        ({"gn:countryCode": "   "}, "gn:countryCode: missing"),
        ({ID: None}, "id: missing"),
        ({AUTHOR: ""}, "dct:rights/cc:attributionName: missing"),
        (
            {"rdfs:label/dc:language": "fr"},
            'rdfs:label/dc:language: "fr" is not a three-letter ISO 639-3 code such as fra',
        ),
        ({ID: "x" * 201}, "id: is longer than 200 characters"),
        (
            {ID: "", LATITUDE: "95", "gn:countryCode": "FRA"},
            'id: missing; gn:countryCode: "FRA" is not two letters; w3geo:latitude: 95 is above 90',
        ),
    ],
)
def test_failure_messages(changes: dict[str, Value], message: str) -> None:
    assert decide_one(**changes) == failure(message)


def test_a_description_title_requires_its_creator_and_language() -> None:
    required = f"missing (required with {DESC_TITLE})"
    assert decide_one(**{DESC_TITLE: "Topo"}) == failure(
        f"{DESC_CREATOR}: {required}; {DESC_LANGUAGE}: {required}"
    )
    assert decide_one(**{DESC_TITLE: "Topo", DESC_LANGUAGE: "fra"}) == failure(
        f"{DESC_CREATOR}: {required}"
    )
    assert decide_one(**{DESC_TITLE: "Topo", DESC_CREATOR: "Jean", DESC_LANGUAGE: " "}) == failure(
        f"{DESC_LANGUAGE}: {required}"
    )
    assert isinstance(
        decide_one(**{DESC_TITLE: "Topo", DESC_CREATOR: "Jean", DESC_LANGUAGE: "fra"}), Winner
    )
    # Without a title, its companions are optional (but still checked when given).
    assert isinstance(decide_one(**{DESC_TITLE: "  ", DESC_CREATOR: "", DESC_LANGUAGE: ""}), Winner)
    assert isinstance(decide_one(**{DESC_CREATOR: "Jean"}), Winner)
    assert decide_one(**{DESC_LANGUAGE: "FRA"}) == failure(
        f'{DESC_LANGUAGE}: "FRA" is not a three-letter ISO 639-3 code such as fra'
    )


def test_an_access_description_requires_its_language_and_creator() -> None:
    required = f"missing (required with {ACCESS_DESC})"
    assert decide_one(**{ACCESS_DESC: "Par le nord"}) == failure(
        f"{ACCESS_LANGUAGE}: {required}; {ACCESS_CREATOR}: {required}"
    )
    assert decide_one(**{ACCESS_DESC: "Par le nord", ACCESS_CREATOR: "Ann"}) == failure(
        f"{ACCESS_LANGUAGE}: {required}"
    )
    assert decide_one(**{ACCESS_DESC: "Par le nord", ACCESS_LANGUAGE: "eng"}) == failure(
        f"{ACCESS_CREATOR}: {required}"
    )
    assert isinstance(
        decide_one(**{ACCESS_DESC: "Par le nord", ACCESS_LANGUAGE: "eng", ACCESS_CREATOR: "Ann"}),
        Winner,
    )
    assert isinstance(decide_one(**{ACCESS_DESC: "", ACCESS_CREATOR: ""}), Winner)


def test_both_conditional_groups_report_in_column_order() -> None:
    title, access = f"(required with {DESC_TITLE})", f"(required with {ACCESS_DESC})"
    assert decide_one(**{DESC_TITLE: "Topo", ACCESS_DESC: "Par le nord"}) == failure(
        f"{DESC_CREATOR}: missing {title}; {DESC_LANGUAGE}: missing {title}; "
        f"{ACCESS_LANGUAGE}: missing {access}; {ACCESS_CREATOR}: missing {access}"
    )


def test_a_valid_row_is_coerced_and_trimmed() -> None:
    outcome = decide_one(**{ID: " m1 ", LATITUDE: " -12.5 ", "w3geo:longitude": "180"})
    assert isinstance(outcome, Winner)
    assert outcome.key == ("m1", "FFS")
    record = dict(zip([c.name for c in DATASET.columns], outcome.record, strict=True))
    assert record[ID] == "m1"
    assert record[LATITUDE] == -12.5
    assert record["w3geo:longitude"] == 180.0
    assert record[LABEL] is None
    assert record["w3geo:altitude"] is None


def test_a_reading_problem_wins_over_validation() -> None:
    header = list(HEADER)
    rows = [
        StagedRow(2, values_in(header, entrance("p", latitude="91")), READING_PROBLEM),
        StagedRow(3, [], "the row is not an object"),
        StagedRow(4, values_in(header, entrance("p"))),
    ]
    winners, rejected = decide(DATASET, positions_of(header), rows)
    assert [w.line for w in winners] == [4]
    assert rejected == [
        Rejected(2, "failure", READING_PROBLEM),
        Rejected(3, "failure", "the row is not an object"),
    ]


def test_a_valid_row_after_failing_rows_of_its_key_wins() -> None:
    header = list(HEADER)
    rows = [
        StagedRow(2, values_in(header, entrance("k", latitude="91"))),
        StagedRow(3, values_in(header, entrance("k")), READING_PROBLEM),
        StagedRow(5, values_in(header, entrance("k", country="FRA"))),
        StagedRow(6, values_in(header, entrance(" k "))),
        StagedRow(7, values_in(header, entrance("k", latitude="-1"))),
    ]
    winners, rejected = decide(DATASET, positions_of(header), rows)
    assert [(w.line, w.key) for w in winners] == [(6, ("k", "FFS"))]
    assert [(r.line, r.outcome) for r in rejected] == [
        (2, "failure"),
        (3, "failure"),
        (5, "failure"),
        (7, "duplicate"),
    ]
    assert rejected[-1].message == "duplicate of line 6"


def test_hypothesis_sees_every_kind() -> None:
    """Guard against a strategy that silently stops producing some kind of row."""
    seen: set[str] = set()

    @settings(max_examples=50, deadline=None)
    @given(scenarios(min_size=10))
    def collect(scenario: tuple[dict[str, int], list[Case]]) -> None:
        assume(scenario[1])
        seen.update(c.kind for c in scenario[1])

    collect()
    assert seen == {"valid", "invalid", "problem"}


OPTIONAL_KEY_DATASET = """
[datasets.caves]
dedup_key = ["code", "region"]
[[datasets.caves.columns]]
name = "code"
field = "code"
required = true
[[datasets.caves.columns]]
name = "region"
field = "region"
"""


def test_an_optional_dedup_key_column_is_refused_or_fails_the_row() -> None:
    try:
        dataset = parse_datasets(OPTIONAL_KEY_DATASET)["caves"]
    except DatasetError:
        return  # refusing the definition is one acceptable fix
    positions = dict(dataset.match_header(["code", "region"]).positions)
    rows = [StagedRow(2, ["c1", ""]), StagedRow(3, ["c2", "alps"])]
    winners, rejected = decide(dataset, positions, rows)  # raises AssertionError today
    assert [w.line for w in winners] == [3]
    assert [(r.line, r.outcome) for r in rejected] == [(2, "failure")]
    assert "region" in rejected[0].message
