"""The completion email: what :func:`importq.delivery.at_most_once.deliver_once` hands
over on the ``email`` channel."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.rows import dict_row

from importq.delivery.at_most_once import PermanentFailure, deliver_once
from importq.delivery.mailer import CompletionFacts, deliver, render_completion_email
from importq.i18n import resolve_locale
from importq.services import Services
from importq.sql import queries

EMAIL = "email"
# More exchanges with the SMTP server than sending one message takes: connect, EHLO,
# STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA, the message, QUIT.
SMTP_EXCHANGES = 12


async def send_completion_email(
    services: Services,
    batch_id: uuid.UUID,
    *,
    last_attempt: bool = False,
) -> bool:
    """Send the batch's email unless it was sent already. True when this call sent it."""
    settings = services.settings

    async def send(batch: dict[str, Any], message_id: str) -> None:
        async with services.pool.connection() as conn, conn.cursor(row_factory=dict_row) as users:
            await users.execute(queries["user_by_id"], {"user_id": batch["initiator_id"]})
            user = await users.fetchone()
        assert user is not None and batch["result"] is not None
        if not user["email"] and settings.smtp_url:
            raise PermanentFailure(f"user {user['name']} has no email address")
        async with services.pool.connection() as conn:
            dataset = await services.datasets.version(
                conn, batch["dataset"], batch["dataset_version"]
            )
        facts = CompletionFacts(
            batch_id=str(batch_id),
            status=batch["status"],
            dataset_label=dataset.label if dataset else batch["dataset"],
            file_name=batch["file_name"],
            total=batch["total_rows"],
            successes=batch["successes"],
            duplicates=batch["duplicates"],
            failures=batch["failures"],
            completed_at=batch["completed_at"],
            report_urls=batch["result"]["reportUrls"],
            reports_expire_at=batch["reports_expire_at"],
            batch_url=f"{settings.base_url}/jobs/{batch_id}",  # the page people read
            dry_run=batch["dry_run"],
            undo=batch["type"] == "undo",
            aborted=batch["aborted_at"] is not None,
            mode=batch["mode"],
            inserted=batch["inserted"],
            updated=batch["updated"],
            unchanged=batch["unchanged"],
        )
        message = render_completion_email(
            facts,
            locale=resolve_locale(user["locale"], batch["locale"]),
            to=user["email"] or user["name"],
            sender=settings.mail_from,
        )
        await deliver(
            message,
            smtp_url=settings.smtp_url,
            outbox=settings.outbox_dir,
            ca_file=settings.smtp_ca_file,
            smtp_timeout=settings.smtp_timeout,
        )

    # smtplib's timeout bounds each exchange with the server; a message takes a handful.
    lease = settings.smtp_timeout * SMTP_EXCHANGES
    return await deliver_once(
        services,
        batch_id,
        EMAIL,
        send,
        lease_seconds=lease,
        last_attempt=last_attempt,
    )
