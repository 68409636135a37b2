"""The metrics token, as the API and a worker's metrics port compare it (no database):
``Bearer <token>`` alone opens them, whatever characters the token has."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from importq.operations.metrics import serve_metrics, token_matches
from processes import free_port

# A client sends a header's text as UTF-8; servers hand it on decoded as Latin-1.
TOKEN = "grüße-ключ-令牌"


def _as_received(header: str) -> str:
    return header.encode().decode("latin-1")


def test_only_the_token_itself_matches() -> None:
    assert token_matches("Bearer scrape-me", "scrape-me")
    assert token_matches("bearer  scrape-me ", "scrape-me")
    for refused in (None, "", "Bearer", "Bearer ", "Basic scrape-me", "Bearer scrape-m"):
        assert not token_matches(refused, "scrape-me"), refused
    assert not token_matches("Bearer ", "")  # no token is never one


def test_a_token_beyond_ascii_matches_as_its_bytes() -> None:
    assert token_matches(_as_received(f"Bearer {TOKEN}"), TOKEN)
    assert not token_matches(_as_received("Bearer grüße"), TOKEN)
    assert not token_matches("Bearer 令牌", TOKEN)  # not as a server gives a header


@pytest.fixture
def worker_port() -> Iterator[int]:
    port = free_port()
    server = serve_metrics("127.0.0.1", port, TOKEN, lambda: b"importq_up 1\n")
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def test_a_worker_s_metrics_port_takes_a_token_beyond_ascii(worker_port: int) -> None:
    url = f"http://127.0.0.1:{worker_port}/metrics"
    sent = {b"Authorization": f"Bearer {TOKEN}".encode()}
    assert httpx.get(url, headers=sent).status_code == 200
    for refused in ({b"Authorization": b"Bearer"}, {b"Authorization": "Bearer grüße".encode()}):
        assert httpx.get(url, headers=refused).status_code == 401
