"""Rendering and sending the completion email.

Every message carries a ``Message-ID`` derived from the batch id. The outbox file is
named by it, so writing the same message twice leaves one file.

The email is rendered from ``templates/email`` in the initiator's locale. Rendering uses
jinja2 with babel's gettext (``{% trans %}``), with autoescaping on. Babel formats the
numbers and dates for the locale. Right-to-left locales get ``dir="rtl"``. The message
is then sent over SMTP, or written to the outbox folder.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal
from jinja2 import Environment, FileSystemLoader, select_autoescape

from importq.i18n import RTL_LOCALES, babel_locale, translations
from importq.resources import resource_dir

log = logging.getLogger(__name__)


def N_(message: str) -> str:
    """Mark a string for extraction; it is translated where it is used."""
    return message


REPORT_LABELS = {
    "success": N_("Imported rows"),
    "duplicates": N_("Duplicates"),
    "failures": N_("Failures"),
}
# An undo's successes report: the rows it took back.
UNDONE_ROWS = N_("Undone rows")


class MailError(RuntimeError):
    """The message could not be handed over; retry later."""


def message_id(batch_id: str) -> str:
    return f"<import-{batch_id}@importq>"


@dataclass(frozen=True)
class CompletionFacts:
    """What the email says about a finished batch."""

    batch_id: str
    status: str
    dataset_label: str
    file_name: str | None
    total: int
    successes: int
    duplicates: int
    failures: int
    completed_at: datetime
    report_urls: Mapping[str, str | None]
    reports_expire_at: datetime | None
    batch_url: str
    #: Nothing was written: the email says what an import would do.
    dry_run: bool = False
    #: The batch is an undo of another: its successes are rows undone.
    undo: bool = False
    #: Stopped for its failed rows (onError): nothing was written.
    aborted: bool = False
    #: An update mode's successes, by what they did (shown for upsert and update-only).
    mode: str = "insert"
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def _environment(locale: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(resource_dir("templates") / "email"),
        autoescape=select_autoescape(["html.j2"]),
        extensions=["jinja2.ext.i18n"],
        keep_trailing_newline=True,
    )
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    return env


def render_completion_email(
    facts: CompletionFacts, *, locale: str, to: str, sender: str
) -> EmailMessage:
    """Build the email (subject, plain text and HTML parts) in ``locale``."""
    env = _environment(locale)
    gettext = translations(locale).gettext
    where = babel_locale(locale)
    failed = facts.status == "failed"
    cancelled = facts.status == "cancelled"
    if facts.dry_run:
        subject = gettext("Dry run: %(name)s")
    elif facts.undo:
        subject = gettext("Undo failed: %(name)s") if failed else gettext("Undo complete: %(name)s")
    elif facts.aborted:
        subject = gettext("Import aborted: %(name)s")
    elif failed:
        subject = gettext("Import failed: %(name)s")
    elif cancelled:
        subject = gettext("Import cancelled: %(name)s")
    else:
        subject = gettext("Import complete: %(name)s")
    subject %= {"name": facts.file_name or facts.dataset_label}
    context: dict[str, Any] = {
        "locale": locale,
        "direction": "rtl" if locale in RTL_LOCALES else "ltr",
        "align": "right" if locale in RTL_LOCALES else "left",
        "subject": subject,
        "failed": failed,
        "cancelled": cancelled,
        "dry_run": facts.dry_run,
        "undo": facts.undo,
        "aborted": facts.aborted,
        "by_outcome": facts.mode != "insert" and not facts.undo,
        "inserted": format_decimal(facts.inserted, locale=where),
        "updated": format_decimal(facts.updated, locale=where),
        "unchanged": format_decimal(facts.unchanged, locale=where),
        "dataset_label": facts.dataset_label,
        "file_name": facts.file_name or "—",
        "batch_id": facts.batch_id,
        "batch_url": facts.batch_url,
        "completed_at": format_datetime(facts.completed_at, "long", tzinfo=UTC, locale=where),
        "total": format_decimal(facts.total, locale=where),
        "successes": format_decimal(facts.successes, locale=where),
        "duplicates": format_decimal(facts.duplicates, locale=where),
        "failures": format_decimal(facts.failures, locale=where),
        "reports": [
            {"label": gettext(label), "url": facts.report_urls.get(kind)}
            for kind, label in (
                REPORT_LABELS | ({"success": UNDONE_ROWS} if facts.undo else {})
            ).items()
            if facts.report_urls.get(kind)
        ],
        "reports_expire": (
            format_date(facts.reports_expire_at, "long", locale=where)
            if facts.reports_expire_at
            else ""
        ),
    }
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id(facts.batch_id)
    message.set_content(env.get_template("import_complete.txt.j2").render(context))
    message.add_alternative(
        env.get_template("import_complete.html.j2").render(context), subtype="html"
    )
    # Set after add_alternative, which moves every Content-* header into the first part.
    message["Content-Language"] = locale
    return message


def outbox_file(outbox: Path, message: EmailMessage) -> Path:
    name = str(message["Message-ID"]).strip("<>").replace("@", "_at_").replace("/", "_")
    return outbox / f"{name}.eml"


def _write_outbox(outbox: Path, message: EmailMessage) -> None:
    outbox.mkdir(parents=True, exist_ok=True)
    target = outbox_file(outbox, message)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    partial.write_bytes(bytes(message))
    partial.replace(target)


SMTP_SCHEMES = {"smtps": 465, "smtp": 587, "smtp+plain": 25}


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A context that verifies the certificate and host name.

    ``ca_file``, when given, replaces the system's CAs.
    """
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


class _Deadline(smtplib.SMTP):
    """smtplib's client, whose whole conversation ends at ``deadline`` (a
    :func:`time.monotonic` time): smtplib's ``timeout`` bounds each read, and a server that
    answers a byte at a time never trips it. Past the deadline an operation raises
    :class:`TimeoutError` (smtplib turns one in a read into ``SMTPServerDisconnected``)."""

    def __init__(self, *args: Any, deadline: float, **kwargs: Any) -> None:
        self.deadline = deadline
        super().__init__(*args, **kwargs)

    def time_left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the conversation with the mail server ran out of time")
        return min(left, self.timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # SMTP_SSL's handshake happens in here, bounded as a whole by the socket's timeout.
        # (typeshed leaves out this private method of smtplib's.)
        sock: socket.socket = super()._get_socket(  # type: ignore[misc]
            host, port, self.time_left()
        )
        return sock

    def send(self, s: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self.time_left())
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        # smtplib reads replies through self.file, a fresh one after STARTTLS.
        if self.file is None and self.sock is not None:
            self.file = io.BufferedReader(_BoundedReads(self, self.sock))
        return super().getreply()

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if self.sock is not None:
            self.sock.settimeout(self.time_left())
        return super().starttls(*args, **kwargs)


class _DeadlineSSL(_Deadline, smtplib.SMTP_SSL):
    """An implicit-TLS client with a deadline (:class:`_Deadline`)."""


class _BoundedReads(io.RawIOBase):
    """A socket's reads, each given only the time left to its client's deadline."""

    def __init__(self, client: _Deadline, sock: socket.socket) -> None:
        self._client = client
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._client.time_left())
        return self._sock.recv_into(buffer)


def _smtp_session(
    url: str, *, ca_file: Path | None, timeout: float, deadline: float = math.inf
) -> smtplib.SMTP:
    """A connection to the mail server of ``url``, greeted, over TLS where the scheme asks,
    signed in when the URL has credentials: ready to send. The caller closes it. Each read
    waits ``timeout`` at most, and none goes on past ``deadline`` (:class:`_Deadline`).

    Credentials are only ever sent over a verified TLS connection. The URL's scheme
    chooses the transport:

    - ``smtps://`` uses implicit TLS.
    - ``smtp://`` sends only after STARTTLS.
    - ``smtp+plain://`` has no TLS. It is for a local relay, and credentials are refused.
    """
    host, port, scheme = smtp_address(url)
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else ""
    if scheme == "smtp+plain" and user:
        raise MailError(
            "smtp+plain:// has no TLS: refusing to send credentials (use smtp:// or smtps://)"
        )
    context = _tls_context(ca_file) if scheme != "smtp+plain" else None
    client: smtplib.SMTP
    if scheme == "smtps":
        client = _DeadlineSSL(host, port, context=context, timeout=timeout, deadline=deadline)
    else:
        client = _Deadline(host, port, timeout=timeout, deadline=deadline)
    try:
        client.ehlo()
        if scheme == "smtp":
            if not client.has_extn("starttls"):
                raise MailError(f"{host} does not offer STARTTLS; refusing to send")
            client.starttls(context=context)
            client.ehlo()
        if user:
            client.login(user, password)
    except BaseException:
        client.close()
        raise
    return client


def smtp_address(url: str) -> tuple[str, int, str]:
    """The host, port and scheme of an SMTP URL (:class:`MailError` for one importq
    cannot use)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SMTP_SCHEMES:
        raise MailError(f"unsupported SMTP URL scheme {parts.scheme!r}")
    try:
        port = parts.port or SMTP_SCHEMES[scheme]
    except ValueError as error:
        raise MailError("the SMTP URL has an invalid port") from error
    if not parts.hostname:
        raise MailError("the SMTP URL has no host")
    return parts.hostname, port, scheme


def _send_smtp(
    url: str, message: EmailMessage, *, ca_file: Path | None = None, timeout: float = 30.0
) -> None:
    """Send the message over SMTP (:func:`_smtp_session`)."""
    client = _smtp_session(url, ca_file=ca_file, timeout=timeout)
    try:
        client.send_message(message)
    except BaseException:
        client.close()
        raise
    # The message was handed over when DATA was accepted, so a failing QUIT changes nothing.
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def check_smtp(url: str, *, ca_file: Path | None = None, timeout: float = 10.0) -> None:
    """Greet the mail server, sign in as a message would be sent, and leave, all within
    ``timeout`` seconds: raises what sending would, and :class:`TimeoutError` when the
    server has not answered in full by then."""
    deadline = time.monotonic() + timeout
    try:
        client = _smtp_session(url, ca_file=ca_file, timeout=timeout, deadline=deadline)
    except (OSError, smtplib.SMTPException) as error:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no complete answer in {timeout:g} s") from error
        raise
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


async def deliver(
    message: EmailMessage,
    *,
    smtp_url: str | None,
    outbox: Path,
    ca_file: Path | None = None,
    smtp_timeout: float = 30.0,
) -> None:
    """Hand the message over, by SMTP when configured, else as a file in the outbox.

    Raises :class:`MailError` when it could not be handed over. The caller retries later.
    """
    try:
        if smtp_url:
            await asyncio.to_thread(
                _send_smtp, smtp_url, message, ca_file=ca_file, timeout=smtp_timeout
            )
        else:
            await asyncio.to_thread(_write_outbox, outbox, message)
    except (OSError, smtplib.SMTPException, UnicodeError) as error:
        # The exception is for the operator's log; the batch's lastError gets the sense.
        log.warning("email %s not handed over: %r", message["Message-ID"], error)
        raise MailError(_what_went_wrong(error, by_smtp=bool(smtp_url))) from error


def _what_went_wrong(error: OSError | smtplib.SMTPException | UnicodeError, by_smtp: bool) -> str:
    """What a failed hand-over means, for the people who read the batch's lastError."""
    if isinstance(error, UnicodeError):
        return "the message could not be encoded"
    if not by_smtp:
        return "the message could not be written to the outbox"
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return "the mail server refused the recipient's address"
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return "the mail server refused importq's sign-in"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"the mail server answered {error.smtp_code}"
    if isinstance(error, smtplib.SMTPException):
        return "the mail server broke off the conversation"
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        return "the TLS connection to the mail server failed"
    if isinstance(error, TimeoutError):
        return "the mail server did not answer in time"
    return "cannot reach the mail server"
