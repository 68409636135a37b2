"""The OpenAPI document's promises that need no running service."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from importq.api.app import create_app
from importq.callback_urls import CALLBACK_URL_PATTERN, is_callback_url
from importq.config import Settings
from importq.errors import Refusal
from importq.ingest.csv_reader import DELIMITER_NAMES, resolve_delimiter
from importq.ingest.text_encoding import encoding_names, resolve_encoding
from importq.rules.datasets import load_datasets

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir: Path = tmp_path_factory.mktemp("data")
    app = create_app(
        Settings(database_url="postgresql://nobody@127.0.0.1:1/none", data_dir=data_dir)
    )
    return app.openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in document["paths"].items() for m, op in ops.items()]


def test_every_error_has_the_body_it_is_answered_with(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            if status[0] not in "45" or path.startswith("/health"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == ERROR_BODY, (method, path, status)


def test_every_route_behind_the_token_says_401_and_503(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        if operation.get("security") != [{"apiToken": []}]:
            # Open to anyone, or (/metrics) behind a token of its own, not an API token.
            assert path.startswith(("/files/", "/health", "/metrics")), (method, path)
            continue
        responses = operation["responses"]
        assert responses["401"]["headers"]["WWW-Authenticate"]["required"], (method, path)
        assert responses["503"]["headers"]["Retry-After"]["required"], (method, path)


def test_import_rows_is_one_operation_per_dataset_naming_its_columns(
    document: dict[str, Any],
) -> None:
    entrances = load_datasets()["entrances"]
    operation = document["paths"]["/api/v1/entrances/import-rows"]["post"]
    rows = operation["requestBody"]["content"]["application/json"]["schema"]
    data = rows["properties"]["data"]
    # Each mandatory column in some row: the service's header is every row's keys.
    assert [rule["contains"]["required"] for rule in data["allOf"]] == [
        [name] for name in entrances.mandatory_columns
    ]
    assert list(data["items"]["properties"]) == [c.name for c in entrances.columns]
    assert operation["responses"]["202"]["headers"]["Location"]["required"]
    assert "/api/v1/{dataset}/import-rows" not in document["paths"]


@settings(max_examples=500)
@given(st.from_regex(CALLBACK_URL_PATTERN, fullmatch=True))
@example("http://user:pw@hooks.example.org:65535/x?y=é")
def test_every_callback_url_the_pattern_admits_can_be_delivered_to(url: str) -> None:
    """The pattern is published in the document and is the whole check; each URL it
    admits parses with a host and a valid port, by urllib and by httpx, as a delivery
    needs."""
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.hostname
    assert parts.port is None or 0 <= parts.port <= 65535
    assert httpx.URL(url).raw_host


@pytest.mark.parametrize(
    "url", ["http://\u2100@example.org/", "http://[::1]/", "http://a:65536/", "ftp://a/"]
)
def test_a_callback_url_the_pattern_refuses(url: str) -> None:
    """A user part urllib would normalise into a delimiter (℀ is a/c) among them."""
    assert not is_callback_url(url)


def test_every_documented_encoding_and_delimiter_is_taken(document: dict[str, Any]) -> None:
    parameters = {
        p["name"]: p["schema"]
        for p in document["paths"]["/api/v1/entrances/import-rows"]["post"]["parameters"]
    }
    assert parameters["encoding"]["enum"] == encoding_names()
    assert parameters["delimiter"]["enum"] == list(DELIMITER_NAMES)
    for name in encoding_names():
        resolve_encoding(name)
    for name in DELIMITER_NAMES:
        resolve_delimiter(name)
    for name in ("latin-1", "windows-1252", "UTF-8", " utf8 "):
        resolve_encoding(name)
    with pytest.raises(Refusal):
        resolve_encoding("punycode")


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


def test_patterns_are_written_so_python_and_json_schema_read_them_alike(
    document: dict[str, Any],
) -> None:
    """No class shorthand (\\s, \\d, \\w…): their meaning differs between the two."""
    patterns = _patterns(document)
    assert len(patterns) >= 5
    for pattern in patterns:
        assert not re.search(r"\\[sSdDwWbB]", pattern), pattern
