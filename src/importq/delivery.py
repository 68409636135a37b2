"""Sending what a finished batch owes its initiator: the completion email.

The ``deliveries`` row is locked while the message is handed over, so two jobs never
send it at once, and once ``sent_at`` is recorded it is never sent again. A send that
fails raises (the job retries with backoff); it never touches the batch's status.
"""

from __future__ import annotations

import uuid

from psycopg.rows import dict_row

from importq import batches
from importq.i18n import resolve_locale
from importq.mail import CompletionFacts, deliver, render_completion_email
from importq.services import Services
from importq.sql import queries

EMAIL = "email"


async def send_completion_email(services: Services, batch_id: uuid.UUID) -> bool:
    """Send the batch's email unless it was sent; True when this call sent it."""
    settings = services.settings
    async with services.pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            queries["lock_delivery"], {"batch_id": batch_id, "channel": EMAIL}
        )
        delivery = await cursor.fetchone()
        if delivery is None or delivery[1] is not None:
            return False
        batch = await batches.get_batch(conn, batch_id)
        assert batch is not None and batch["result"] is not None
        async with conn.cursor(row_factory=dict_row) as users:
            await users.execute(queries["user_by_id"], {"user_id": batch["initiator_id"]})
            user = await users.fetchone()
        assert user is not None
        if not user["email"] and settings.smtp_url:
            await conn.execute(
                queries["delivery_failed"],
                {
                    "batch_id": batch_id,
                    "channel": EMAIL,
                    "error": f"user {user['name']} has no email address",
                },
            )
            return False
        locale = resolve_locale(user["locale"], batch["locale"])
        dataset = services.datasets.get(batch["dataset"])
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
            batch_url=f"{settings.public_url.rstrip('/')}/api/v1/jobs/{batch_id}",
        )
        message = render_completion_email(
            facts, locale=locale, to=user["email"] or user["name"], sender=settings.mail_from
        )
        await deliver(message, smtp_url=settings.smtp_url, outbox=settings.outbox_dir)
        await conn.execute(queries["delivery_sent"], {"batch_id": batch_id, "channel": EMAIL})
    return True
