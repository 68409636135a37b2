"""Where a webhook may go: public unicast addresses only, pinned to the address that was
checked, proxies left alone (no database, no network)."""

from __future__ import annotations

import httpx
import pytest

from importq.delivery.webhooks import (
    behind_proxy,
    check_destination,
    inward_address,
    pinned_request,
)


async def test_https_keeps_the_urls_host_for_tls_and_an_allowed_host_is_not_pinned() -> None:
    async with httpx.AsyncClient() as client:
        pinned = pinned_request(client, "https://hooks.example:8443/h", "192.0.2.7", {}, b"")
        assert str(pinned.url) == "https://192.0.2.7:8443/h"
        assert pinned.headers["host"] == "hooks.example:8443"
        assert pinned.extensions["sni_hostname"] == "hooks.example"
        allowed = pinned_request(client, "https://hooks.example/h", None, {}, b"")
        assert str(allowed.url) == "https://hooks.example/h"
        assert "sni_hostname" not in allowed.extensions
    assert await check_destination("https://hooks.example/h", frozenset({"hooks.example"})) is None
    # A public address is sent to as checked (a literal needs no DNS).
    assert await check_destination("http://8.8.8.8:8080/h", frozenset()) == "8.8.8.8"


def test_only_public_unicast_addresses_are_reachable() -> None:
    for inward in (
        "127.0.0.1",
        "10.1.2.3",
        "100.100.100.200",  # shared address space: a cloud's metadata service
        "169.254.169.254",
        "::1",
        "fe80::1%eth0",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "224.0.0.1",
    ):
        assert inward_address(inward), inward
    for public in ("8.8.8.8", "2606:4700:4700::1111"):
        assert not inward_address(public), public


async def test_an_international_host_is_sent_as_httpx_writes_it() -> None:
    async with httpx.AsyncClient() as client:
        request = pinned_request(client, "https://straße.example/h", "8.8.8.8", {}, b"")
    assert request.extensions["sni_hostname"] == "xn--strae-oqa.example"
    assert request.headers["host"] == "xn--strae-oqa.example"


def test_a_proxied_delivery_is_left_to_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    assert behind_proxy("https://hooks.example/h")
    assert not behind_proxy("https://direct.example/h")
    assert not behind_proxy("http://hooks.example/h")  # no proxy for plain http here
