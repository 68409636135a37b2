"""Where a webhook may go: public unicast addresses only, pinned to the address that was
checked, proxies left alone (no database, no network)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from importq.delivery.webhooks import (
    WebhookRefused,
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
    assert await check_destination("http://8.8.8.8/h", frozenset()) == "8.8.8.8"


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
        "64:ff9b::7f00:1",  # NAT64 (RFC 6052) of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1:a9fe:a9:fe00::",  # local-use NAT64 /48 (RFC 8215) of 169.254.169.254
        "64:ff9b:1:808:8:0:a00:1",  # local-use NAT64 in another layout: local anyway
        "fec0::1",  # the old site-local addresses
        "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::a00:1",  # IPv4-compatible 10.0.0.1
    ):
        assert inward_address(inward), inward
    for public in ("8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"):
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


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://93.184.216.34:8080/hook", "93.184.216.34"),
        ("https://[2606:4700:4700::1111]:8443/hook", "2606:4700:4700::1111"),
    ],
)
async def test_a_port_other_than_80_or_443_is_refused_unless_the_host_is_allowed(
    url: str, host: str
) -> None:
    with pytest.raises(WebhookRefused, match="refused by the webhook address policy"):
        await check_destination(url, frozenset())
    assert await check_destination(url, frozenset({host})) is None


async def test_a_refusal_does_not_say_what_the_name_resolved_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(WebhookRefused) as refused:
        await check_destination("http://localhost/hook", frozenset())
    assert "127.0.0.1" not in str(refused.value)
    assert str(refused.value).startswith("refused by the webhook address policy")
    assert "127.0.0.1" in caplog.text  # the operator's log says it


def test_the_log_never_holds_a_callback_urls_secrets(caplog: pytest.LogCaptureFixture) -> None:
    url = "http://user:pass@10.0.0.1:8080/hook?token=s3cret#x"
    with pytest.raises(WebhookRefused):
        asyncio.run(check_destination(url, frozenset()))
    assert "http://10.0.0.1:8080/hook" in caplog.text
    assert "s3cret" not in caplog.text and "pass" not in caplog.text
