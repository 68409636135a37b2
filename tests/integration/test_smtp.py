"""The completion email over real SMTP: an aiosmtpd server on 127.0.0.1, plain, STARTTLS
with AUTH, implicit TLS (a private CA made by trustme), a server that is down, and the
last attempt that gives up on the batch without touching its status."""

from __future__ import annotations

import asyncio
import contextlib
import email
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from conftest import make_settings, new_user
from helpers import entrance, post_rows, wait_for_batch
from importq.config import Settings
from importq.delivery.completion_email import send_completion_email
from importq.delivery.mailer import MailError, deliver
from importq.i18n import available_locales
from importq.services import Services

HOST = "127.0.0.1"
LOGIN, PASSWORD = "mailer", "s3cret/p@ss"
CREDENTIALS = "mailer:s3cret%2Fp%40ss"


@dataclass
class Received:
    message: EmailMessage
    mail_from: str
    rcpt_tos: list[str]
    tls: bool
    authenticated: bool


@dataclass
class Inbox:
    """aiosmtpd handler that keeps every message it accepts."""

    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(
                message,
                envelope.mail_from,
                list(envelope.rcpt_tos),
                session.ssl is not None,
                bool(session.authenticated),
            )
        )
        return "250 OK"


@dataclass
class Authenticator:
    """Accepts LOGIN/PASSWORD; remembers every AUTH attempt it saw."""

    attempts: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        self.attempts.append((mechanism, auth_data))
        ok = isinstance(auth_data, LoginPassword) and auth_data == (
            LOGIN.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok)


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A private CA and a server certificate for 127.0.0.1 signed by it."""
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    return Tls(ca_file, context)


@pytest.fixture
def smtp_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


StartServer = Callable[..., Controller]


@pytest.fixture
def smtp_server(smtp_port: int) -> Iterator[StartServer]:
    """Start an aiosmtpd server on ``smtp_port`` (again after a stop, to model an outage)."""
    running: list[Controller] = []

    def start(handler: Inbox, **options: Any) -> Controller:
        controller = Controller(
            handler, hostname=HOST, port=smtp_port, server_hostname="mx.importq.test", **options
        )
        controller.start()
        running.append(controller)
        return controller

    yield start
    for controller in running:
        with contextlib.suppress(AssertionError):
            controller.stop()


@pytest.fixture
def smtp_url() -> str:
    """The configured URL, ``{port}`` filled in; a test parametrizes it to change it."""
    return "smtp+plain://" + HOST + ":{port}"


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, smtp_url: str, smtp_port: int, tls: Tls
) -> Settings:
    return make_settings(
        database_url,
        tmp_path / "data",
        smtp_url=smtp_url.format(port=smtp_port),
        smtp_ca_file=tls.ca_file,
        smtp_timeout=5,
        mail_from="importq <importq@importq.test>",
    )


async def _finish_batch(client: httpx.AsyncClient, ident: str, token: str | None = None) -> str:
    """Import two rows as the client's user (or ``token``'s) and wait until completed."""
    saved = client.headers["Authorization"]
    if token is not None:
        client.headers["Authorization"] = f"Bearer {token}"
    try:
        response = await post_rows(client, [entrance(f"{ident}1"), entrance(f"{ident}2")])
        assert response.status_code == 202, response.text
        batch_id: str = response.json()["batchId"]
        job = await wait_for_batch(client, batch_id)
    finally:
        client.headers["Authorization"] = saved
    assert job["status"] == "completed"
    return batch_id


async def _arrived(inbox: Inbox, count: int, seconds: float = 15) -> list[Received]:
    deadline = time.monotonic() + seconds
    while len(inbox.received) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(inbox.received)} of {count} messages arrived")
        await asyncio.sleep(0.05)
    return inbox.received


async def _delivery(services: Services, batch_id: str) -> dict[str, Any]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT attempts, sent_at, last_error FROM deliveries"
            " WHERE batch_id = %s AND channel = 'email'",
            (batch_id,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return {"attempts": row[0], "sent_at": row[1], "last_error": row[2]}


async def _delivery_once(
    services: Services,
    batch_id: str,
    ready: Callable[[dict[str, Any]], bool],
    seconds: float = 15,
) -> dict[str, Any]:
    """Wait for the worker to record what ``ready`` looks for (it records a send after
    the server has the message, so the inbox alone does not tell)."""
    deadline = time.monotonic() + seconds
    while not ready(delivery := await _delivery(services, batch_id)):
        if time.monotonic() > deadline:
            raise AssertionError(f"not recorded in time: {delivery}")
        await asyncio.sleep(0.05)
    return delivery


async def _failed_once(services: Services, batch_id: str) -> dict[str, Any]:
    """Wait for the worker's first send to fail (the server is down)."""
    return await _delivery_once(services, batch_id, lambda delivery: delivery["attempts"] >= 1)


async def _sent(services: Services, batch_id: str) -> dict[str, Any]:
    return await _delivery_once(
        services, batch_id, lambda delivery: delivery["sent_at"] is not None
    )


async def _stop(worker: asyncio.Task[None]) -> None:
    """Stop the worker, so its retries (seconds later) cannot race the test's sends."""
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker


def _extensions(port: int) -> set[str]:
    """What the server offers after EHLO."""
    with smtplib.SMTP(HOST, port, timeout=5) as probe:
        probe.ehlo()
        return set(probe.esmtp_features)


def _message(to: str = "bob@example.org") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "importq@importq.test"
    message["To"] = to
    message["Subject"] = "hello"
    message["Message-ID"] = "<import-test@importq>"
    message.set_content("hello")
    return message


async def test_one_message_per_batch_in_the_initiators_language(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    smtp_server: StartServer,
) -> None:
    inbox = Inbox()
    smtp_server(inbox)
    french = "fr" in available_locales()
    batch_ids = [await _finish_batch(client, "en")]
    if french:
        token = (await new_user(services, "blaise", email="blaise@example.org", locale="fr"))[1]
        batch_ids.append(await _finish_batch(client, "fr", token))

    received = await _arrived(inbox, len(batch_ids))
    for batch_id in batch_ids:  # a recorded success is never sent again
        # Arrived is not yet recorded: the worker's attempt holds its claim till then.
        await _sent(services, batch_id)
        assert not await send_completion_email(services, uuid.UUID(batch_id))
    await asyncio.sleep(0.3)
    assert sorted(r.message["Message-ID"] for r in inbox.received) == sorted(
        f"<import-{batch_id}@importq>" for batch_id in batch_ids
    )

    english = next(
        r for r in received if r.message["Message-ID"] == f"<import-{batch_ids[0]}@importq>"
    )
    assert english.rcpt_tos == ["alice@example.org"] and english.mail_from == "importq@importq.test"
    assert english.message["To"] == "alice@example.org"
    assert english.message["Subject"] == "Import complete: Entrances"
    assert english.message["Content-Language"] == "en"
    assert not english.tls  # smtp+plain://
    assert (await _sent(services, batch_ids[0]))["attempts"] == 1
    if not french:
        pytest.skip("locales/fr/LC_MESSAGES/importq.po is missing: the French half did not run")
    (other,) = (
        r for r in received if r.message["Message-ID"] == f"<import-{batch_ids[1]}@importq>"
    )
    assert other.rcpt_tos == ["blaise@example.org"]
    assert other.message["Content-Language"] == "fr"
    assert other.message["Subject"] != "Import complete: Entrances"


@pytest.mark.parametrize("smtp_url", [f"smtp://{CREDENTIALS}@{HOST}:{{port}}"])
async def test_starttls_then_credentials_with_a_private_ca(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    smtp_server: StartServer,
    tls: Tls,
) -> None:
    inbox, authenticator = Inbox(), Authenticator()
    smtp_server(
        inbox,
        tls_context=tls.server_context,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
        auth_required=True,
    )
    batch_id = await _finish_batch(client, "t")

    (received,) = await _arrived(inbox, 1)
    assert received.tls and received.authenticated
    assert [data for _, data in authenticator.attempts] == [(LOGIN.encode(), PASSWORD.encode())]
    assert received.message["Message-ID"] == f"<import-{batch_id}@importq>"
    await _sent(services, batch_id)


async def test_smtp_without_starttls_is_refused_before_any_credentials(
    smtp_server: StartServer, smtp_port: int, tls: Tls
) -> None:
    inbox, authenticator = Inbox(), Authenticator()
    # A server that would take AUTH in the clear: the client must not offer it anything.
    smtp_server(inbox, authenticator=authenticator, auth_require_tls=False)
    assert "starttls" not in await asyncio.to_thread(_extensions, smtp_port)
    assert "auth" in await asyncio.to_thread(_extensions, smtp_port)

    with pytest.raises(MailError, match="STARTTLS"):
        await deliver(
            _message(),
            smtp_url=f"smtp://{CREDENTIALS}@{HOST}:{smtp_port}",
            outbox=Path("/nonexistent"),
            ca_file=tls.ca_file,
            smtp_timeout=5,
        )
    assert authenticator.attempts == [] and inbox.received == []


async def test_smtp_plain_refuses_credentials(smtp_server: StartServer, smtp_port: int) -> None:
    inbox = Inbox()
    smtp_server(inbox)
    with pytest.raises(MailError, match="credentials"):
        await deliver(
            _message(),
            smtp_url=f"smtp+plain://{CREDENTIALS}@{HOST}:{smtp_port}",
            outbox=Path("/nonexistent"),
        )
    assert inbox.received == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_smtps_implicit_tls_verifies_the_server(
    smtp_server: StartServer, smtp_port: int, tls: Tls, caplog: pytest.LogCaptureFixture
) -> None:
    inbox, authenticator = Inbox(), Authenticator()
    smtp_server(
        inbox,
        ssl_context=tls.server_context,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,  # aiosmtpd counts only STARTTLS as TLS; this is all TLS
    )
    url = f"smtps://{CREDENTIALS}@{HOST}:{smtp_port}"

    # Verification is on by default: the system's CAs do not know the private one. The
    # batch is told what it means; the log keeps the reason, for the operator.
    with pytest.raises(MailError, match=r"^the TLS connection to the mail server failed$"):
        await deliver(_message(), smtp_url=url, outbox=Path("/nonexistent"), smtp_timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert authenticator.attempts == [] and inbox.received == []

    await deliver(
        _message(), smtp_url=url, outbox=Path("/nonexistent"), ca_file=tls.ca_file, smtp_timeout=5
    )
    (received,) = await _arrived(inbox, 1)
    assert received.authenticated and received.rcpt_tos == ["bob@example.org"]
    assert received.message["Message-ID"] == "<import-test@importq>"


async def test_a_server_that_is_down_delays_the_email_and_nothing_else(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    smtp_server: StartServer,
) -> None:
    batch_id = await _finish_batch(client, "d")  # no server listening yet
    delivery = await _failed_once(services, batch_id)
    assert delivery["sent_at"] is None and delivery["last_error"] == "cannot reach the mail server"
    await _stop(worker)
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "completed" and job["lastError"] is None

    inbox = Inbox()
    smtp_server(inbox)  # the server is back, on the same port
    assert await send_completion_email(services, uuid.UUID(batch_id))
    (received,) = await _arrived(inbox, 1)
    assert received.message["Message-ID"] == f"<import-{batch_id}@importq>"
    delivery = await _delivery(services, batch_id)
    assert delivery["sent_at"] is not None and delivery["last_error"] is None
    assert delivery["attempts"] == 2

    assert not await send_completion_email(services, uuid.UUID(batch_id))
    await asyncio.sleep(0.2)
    assert len(inbox.received) == 1
    assert (await _delivery(services, batch_id))["attempts"] == 2


async def test_the_last_failed_attempt_shows_on_the_batch(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    smtp_server: StartServer,
) -> None:
    batch_id = await _finish_batch(client, "l")
    await _failed_once(services, batch_id)
    await _stop(worker)

    assert not await send_completion_email(services, uuid.UUID(batch_id), last_attempt=True)
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "completed"
    assert job["lastError"] == "email: cannot reach the mail server"
    delivery = await _delivery(services, batch_id)
    assert delivery["sent_at"] is None and delivery["attempts"] == 2

    # Sent after all (a later run): the batch's note goes away, its status stays.
    inbox = Inbox()
    smtp_server(inbox)
    assert await send_completion_email(services, uuid.UUID(batch_id))
    await _arrived(inbox, 1)
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "completed" and job["lastError"] is None


async def test_a_failed_send_is_recorded_and_raised_for_the_retry(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
) -> None:
    batch_id = await _finish_batch(client, "r")
    await _failed_once(services, batch_id)
    await _stop(worker)

    with pytest.raises(MailError, match=r"^cannot reach the mail server$"):
        await send_completion_email(services, uuid.UUID(batch_id))
    delivery = await _delivery(services, batch_id)
    assert delivery["attempts"] == 2 and delivery["last_error"] == "cannot reach the mail server"
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "completed" and job["lastError"] is None
