"""Webhooks: a finished batch's job JSON, signed and POSTed to its ``callbackUrl``.

Invariants:

- A 2xx answer is a success. It is recorded, and the webhook is never sent again.
- Every attempt of a delivery carries the same ``X-Importq-Delivery`` id. Delivery over a
  network is at-least-once, so a receiver can use the id to drop repeats.
- A request never goes to an inward address, unless its host is allowed.

Every attempt is logged in ``delivery_attempts``. The headers:

- ``X-Importq-Timestamp``: unix seconds.
- ``X-Importq-Signature``: ``sha256=<hex>``, the HMAC-SHA256 of
  ``"<timestamp>.<body>"`` keyed with ``IMPORTQ_WEBHOOK_SECRET``.
- ``X-Importq-Delivery``: the delivery's id.

A destination must resolve to public unicast addresses only, on port 80 or 443. Any
other address is refused: private, loopback, link-local, shared, reserved, multicast and
the like, and an IPv6 address that carries one (IPv4-mapped or -compatible, 6to4,
Teredo, NAT64). A refusal is not retried, and its message ("refused by the webhook
address policy") does not say what the name resolved to; the log does. A host listed in
``IMPORTQ_WEBHOOK_ALLOW_HOSTS`` is exempt, on any port.
Redirects are not followed, so a public URL cannot bounce the request inward. The
request goes to the address that was checked, while its Host header stays the URL's
host. For HTTPS, the name sent and verified in TLS also stays the URL's host. So a name
that resolves differently a moment later cannot turn the request inward either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx

from importq.delivery.at_most_once import PermanentFailure, deliver_once
from importq.job_json import Job
from importq.services import Services

log = logging.getLogger(__name__)

WEBHOOK = "webhook"
REFUSED = "refused by the webhook address policy"
# The most of a receiver's answer that is read, and how much of it a failure quotes.
ANSWER_BYTES = 64 * 1024
QUOTED_CHARS = 200
# How long the destination's name may take to resolve.
LOOKUP_SECONDS = 10.0


class WebhookRefused(PermanentFailure):
    """The destination may not be reached: never retried."""


def _what_went_wrong(error: httpx.HTTPError) -> str:
    """What a failed POST means, for the people who read the batch's lastError."""
    if isinstance(error, httpx.ConnectError):
        return "cannot connect to the receiver"
    if isinstance(error, httpx.TimeoutException):
        return "the receiver did not answer in time"
    if isinstance(error, httpx.RemoteProtocolError | httpx.DecodingError):
        return "the receiver's answer was not valid HTTP"
    return "the connection to the receiver failed"


class WebhookFailed(Exception):
    """The receiver did not take the delivery (network error, timeout, non-2xx)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def delivery_id(batch_id: uuid.UUID | str) -> str:
    return f"webhook-{batch_id}"


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of ``"<timestamp>.<body>"``: what a receiver recomputes."""
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def inward_address(address: str) -> bool:
    """Whether ``address`` is not a public unicast address.

    That covers private, loopback, link-local, shared (100.64/10), reserved and multicast
    addresses. It also covers an IPv6 address that carries such an IPv4 address.
    """
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        carried = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        carried.append(_embedded_ipv4(ip))
        if any(v4 is not None and inward_address(str(v4)) for v4 in carried):
            return True
        if any(ip in network for network in _ALWAYS_INWARD):
            return True
    return not ip.is_global or ip.is_multicast


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT's IPv4-translated form
# Inward whatever they carry: a local NAT64 (RFC 8215) may place the IPv4 address in
# more than one layout, and the old site-local addresses are local by definition.
_ALWAYS_INWARD = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 gateway (RFC 6052's well-known /96 prefix), an
    IPv4-compatible or an IPv4-translated address would reach, if any."""
    packed = ip.packed
    if ip in _NAT64 or ip in _TRANSLATED or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(packed[12:])
    return None


def behind_proxy(url: str) -> bool:
    """Whether httpx sends ``url`` through a proxy from the environment."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def _for_log(url: str) -> str:
    """``url`` without what may be a secret: its user, password, query and fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


async def check_destination(url: str, allowed_hosts: frozenset[str]) -> str | None:
    """Check a webhook URL, and return the address to send to.

    Raises WebhookRefused for a URL that is not http(s), or that resolves inward (see the
    module docstring). Returns None, meaning the request is sent by name, for an allowed
    host. It also returns None when the request goes through a proxy from the
    environment. A proxy connects by name itself. Given the address, it would check the
    certificate against the address.
    """
    try:
        target = httpx.URL(url)
        # The host as httpx sends it (IDNA 2008), so that it is resolved in the same form.
        host = target.raw_host.decode("ascii").lower()
        named = urlsplit(url).hostname
    except (httpx.InvalidURL, ValueError) as error:  # UnicodeError is a ValueError
        raise WebhookRefused(f"{_for_log(url)} is not a valid URL: {error}") from error
    if target.scheme not in ("http", "https") or not host:
        raise WebhookRefused(f"{_for_log(url)} is not an http(s) URL")
    if host in allowed_hosts or named in allowed_hosts:
        return None
    if target.port not in (None, 80, 443):
        log.warning("webhook to %s refused: port %s", _for_log(url), target.port)
        raise WebhookRefused(f"{REFUSED}: only ports 80 and 443 may be reached")
    try:
        async with asyncio.timeout(LOOKUP_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host.strip("[]"),
                target.port or (443 if target.scheme == "https" else 80),
                type=socket.SOCK_STREAM,
            )
    except TimeoutError:
        raise WebhookFailed(f"cannot resolve {host} within {LOOKUP_SECONDS:g} s") from None
    except OSError as error:
        log.warning("webhook to %s: cannot resolve %s: %r", _for_log(url), host, error)
        raise WebhookFailed(f"cannot resolve {host}") from error
    inward = sorted({str(info[4][0]) for info in infos if inward_address(str(info[4][0]))})
    if inward:
        # What the name resolved to is for the operator's log, not for the uploader.
        log.warning(
            "webhook to %s refused: %s resolves to %s", _for_log(url), host, ", ".join(inward)
        )
        raise WebhookRefused(
            f"{REFUSED}: {host} is not a public address (an operator may allow it with "
            "IMPORTQ_WEBHOOK_ALLOW_HOSTS)"
        )
    return None if behind_proxy(url) else str(infos[0][4][0])


def pinned_request(
    client: httpx.AsyncClient, url: str, address: str | None, headers: dict[str, str], body: bytes
) -> httpx.Request:
    """A POST of ``body`` to ``url``, sent to ``address`` when one is given.

    The URL's host stays the Host header. For HTTPS it also stays the TLS name, used for
    SNI and the certificate check.
    """
    target = httpx.URL(url)
    extensions: dict[str, str] = {}
    if address is not None:
        headers = {**headers, "Host": target.netloc.decode("ascii")}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.raw_host.decode("ascii")
        target = target.copy_with(host=address)
    return client.build_request(
        "POST", target, content=body, headers=headers, extensions=extensions
    )


async def _post(
    services: Services, url: str, address: str | None, ident: str, body: bytes, key: bytes
) -> int:
    """POST the delivery, all of it within ``IMPORTQ_WEBHOOK_TIMEOUT``.

    A receiver that connects or answers slowly is cut off at the deadline. A 2xx status
    is the success, whatever body follows; the body of another status is read for what
    is left of the deadline, at most ``ANSWER_BYTES`` of it, as it came (never
    decompressed), only to quote its start in the failure.
    """
    seconds = services.settings.webhook_timeout
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "importq-webhook",
        "X-Importq-Delivery": ident,
        "X-Importq-Timestamp": stamp,
        "X-Importq-Signature": signature(key, stamp, body),
    }
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as client:
            request = pinned_request(client, url, address, headers, body)
            async with asyncio.timeout_at(end):
                response = await client.send(request, stream=True)
            try:
                if 200 <= response.status_code < 300:
                    return response.status_code  # its body is not the receiver's word
                answer = ""
                with contextlib.suppress(TimeoutError, httpx.HTTPError):
                    async with asyncio.timeout_at(end):
                        answer = await _answer_start(response)
            finally:
                await response.aclose()
    except TimeoutError:
        raise WebhookFailed(f"no answer within {seconds:g} s") from None
    except httpx.HTTPError as error:
        log.warning("webhook to %s failed: %r", _for_log(url), error)
        raise WebhookFailed(_what_went_wrong(error)) from error
    quoted = f": {answer}" if answer else ""
    raise WebhookFailed(
        f"the receiver answered {response.status_code}{quoted}", response.status_code
    )


async def _answer_start(response: httpx.Response) -> str:
    """The first bytes of the answer as text, when it is not compressed; reads at most
    ``ANSWER_BYTES``."""
    read = b""
    async for piece in response.aiter_raw():
        read += piece
        if len(read) >= ANSWER_BYTES:
            break
    if response.headers.get("content-encoding", "identity") != "identity":
        return ""
    return read[:QUOTED_CHARS].decode("utf-8", "replace").strip()


async def deliver_batch_webhook(
    services: Services,
    batch_id: uuid.UUID,
    *,
    last_attempt: bool = False,
) -> bool:
    """POST the batch's job JSON unless it was delivered already. True when this call did."""

    async def send(batch: dict[str, Any], ident: str) -> int:
        assert batch["callback_url"]
        url = batch["callback_url"]
        address = await check_destination(url, services.settings.webhook_allowed)
        body = Job.from_row(batch).model_dump_json().encode()
        key = services.settings.webhook_key_of(batch["initiator_id"])
        return await _post(services, url, address, ident, body, key)

    # The claim outlasts the POST's deadline and the name lookup before it.
    lease = services.settings.webhook_timeout + LOOKUP_SECONDS
    return await deliver_once(
        services,
        batch_id,
        WEBHOOK,
        send,
        lease_seconds=lease,
        last_attempt=last_attempt,
    )
