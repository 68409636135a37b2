"""importq's procrastinate tasks and the worker that runs them.

Tasks are thin. Each takes the process's :class:`Services` from the job context, and
calls the module that owns the work: :mod:`importq.pipeline.chunk_processing`,
:mod:`importq.pipeline.aggregation` or :mod:`importq.delivery`.

The retries:

- ``process_chunk`` counts its failed attempts on the chunk row. At
  ``IMPORTQ_CHUNK_MAX_ATTEMPTS`` the chunk is failed, with its rows recorded as
  failures. The job then ends successfully, so the batch can finish.
- ``aggregate`` and ``send_email`` retry with exponential backoff. A storage outage
  leaves the batch ``aggregating``, with ``lastError`` set, until the outage passes.
- ``send_email`` and ``deliver_webhook`` retry with backoff for up to
  ``IMPORTQ_MAIL_MAX_ATTEMPTS`` and ``IMPORTQ_WEBHOOK_MAX_ATTEMPTS`` runs. The last run
  records its failure on the batch.
- ``reconcile`` runs periodically. It recovers what a dead worker left (see
  :mod:`importq.pipeline.recovery`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import procrastinate
import psycopg
from procrastinate import JobContext, RetryStrategy
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision
from psycopg_pool import PoolTimeout

from importq.config import Settings
from importq.delivery.completion_email import send_completion_email
from importq.delivery.webhooks import deliver_batch_webhook
from importq.operations import logs, traces
from importq.pipeline import batches
from importq.pipeline.aggregation import REPORT_PARTS
from importq.pipeline.aggregation import aggregate as aggregate_batch
from importq.pipeline.chunk_processing import fail_chunk, record_attempt
from importq.pipeline.chunk_processing import process_chunk as process_one_chunk
from importq.pipeline.job_queue import (
    CHUNKS,
    CHUNKS_EXPRESS,
    COMPLETION,
    MAINTENANCE,
    MESSAGES,
    WEBHOOKS,
)
from importq.pipeline.recovery import reconcile as reconcile_once
from importq.pipeline.row_refusals import for_the_log
from importq.services import Services
from importq.storage import StorageError

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 600


class CappedBackoff(RetryStrategy):
    """Exponential backoff whose wait never exceeds ``MAX_WAIT_SECONDS``.

    After a long outage of storage or the mail server, the next retry then comes within
    minutes of its end.
    """

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        decision = super().get_retry_decision(exception=exception, job=job)
        if decision is None or decision.retry_at is None:
            return decision
        latest = datetime.now(UTC) + timedelta(seconds=MAX_WAIT_SECONDS)
        return RetryDecision(retry_at=latest) if decision.retry_at > latest else decision


# Chunk retries stop at the chunk's own attempt cap. This one only bounds a runaway.
CHUNK_RETRY = CappedBackoff(max_attempts=50, wait=1, exponential_wait=2)
BACKOFF_RETRIES = 20
BACKOFF = CappedBackoff(max_attempts=BACKOFF_RETRIES, wait=1, exponential_wait=2)
# The longest wait before a worker that failed for a reason other than the database is
# run again; a worker that ran this long before it failed starts the count again.
WORKER_RESTART_LONGEST_WAIT = 60.0


def _services(context: JobContext) -> Services:
    services: Services = context.additional_context["services"]
    return services


Task = Callable[..., Awaitable[None]]


def _in_its_context(task_name: str, task: Task) -> Task:
    """``task``, run as part of what deferred it: the arguments every job carries
    besides its own (the request id and the trace, :func:`traces.job_arguments`) are
    taken off, its log lines name its request, batch and chunk
    (:mod:`importq.operations.logs`), and it runs in a span of the batch's trace. Each
    job runs in an asyncio task of its own, so what it sets here is its alone. A job
    deferred before jobs carried anything runs the same, in a trace of its own.

    Arguments the task does not take are dropped, with a line in the log: a job a newer
    release deferred, carrying something more, still runs here during a rolling upgrade
    instead of failing on an unexpected keyword."""
    takes = set(inspect.signature(task).parameters) - {"context"}

    @functools.wraps(task)
    async def run(
        context: JobContext,
        *,
        request_id: str | None = None,
        trace: str | None = None,
        **arguments: Any,
    ) -> None:
        unknown = set(arguments) - takes
        if unknown:
            log.info("%s: arguments %s left out (a newer release's)", task_name, sorted(unknown))
            arguments = {name: value for name, value in arguments.items() if name in takes}
        batch_id, chunk_no = arguments.get("batch_id"), arguments.get("chunk_no")
        logs.batch_id.set(None if batch_id is None else str(batch_id))
        logs.chunk_no.set(None if chunk_no is None else int(str(chunk_no)))
        attributes: dict[str, str | int] = {"importq.task": task_name}
        if batch_id is not None:
            attributes["importq.batch_id"] = str(batch_id)
        if chunk_no is not None:
            attributes["importq.chunk_no"] = int(str(chunk_no))
        if context.job is not None:
            attributes["importq.job_id"] = context.job.id or 0
            attributes["importq.attempt"] = context.job.attempts + 1
        with traces.job_span(task_name, attributes, request_id, trace):
            await task(context, **arguments)

    return run


async def process_chunk(context: JobContext, batch_id: str, chunk_no: int) -> None:
    services = _services(context)
    batch = uuid.UUID(batch_id)
    async with services.pool.connection() as conn:
        try:
            await process_one_chunk(conn, services.queue, services.datasets, batch, chunk_no)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            # A deadlock with another batch's chunk that inserts the same keys. The chunk
            # did nothing wrong, so the retry does not count against its attempts.
            raise
        except Exception as error:
            # psycopg's message may quote a row's values: not for the log.
            reason = (
                for_the_log(error)
                if isinstance(error, psycopg.Error)
                else f"{type(error).__name__}: {error}"
            )
            attempts = await record_attempt(conn, batch, chunk_no, reason)
            log.warning("chunk %s/%s attempt %s failed: %s", batch_id, chunk_no, attempts, reason)
            if attempts >= services.settings.chunk_max_attempts:
                await fail_chunk(conn, services.queue, services.datasets, batch, chunk_no, reason)
                return
            raise


async def check_completion(context: JobContext, batch_id: str) -> None:
    services = _services(context)
    batch = uuid.UUID(batch_id)
    async with services.pool.connection() as conn, conn.transaction():
        if await batches.start_aggregation(conn, batch):
            await services.queue.defer_aggregate(conn, batch)


async def aggregate(context: JobContext, batch_id: str) -> None:
    services = _services(context)
    batch = uuid.UUID(batch_id)
    try:
        await aggregate_batch(services, batch)
    except Exception as error:
        # The exception goes to the log (procrastinate's, as the job fails and is
        # retried); the batch's lastError says what it means to its uploader.
        if isinstance(error, StorageError):
            reason = "the reports cannot be written to storage yet; this is retried"
        else:
            reason = "an error inside importq; this is retried (the service's log has it)"
        async with services.pool.connection() as conn:
            await batches.record_error(conn, batch, f"aggregation: {reason}")
        raise


def _last_attempt(context: JobContext, cap: int) -> bool:
    """Whether this run is the last one a message gets.

    The last run records its failure on the batch and ends the job instead of raising.
    The cap is the setting's, but never more than the runs BACKOFF allows.
    ``job.attempts`` counts the earlier runs.
    """
    return context.job.attempts + 1 >= min(cap, BACKOFF_RETRIES + 1)


async def send_email(context: JobContext, batch_id: str) -> None:
    services = _services(context)
    last = _last_attempt(context, services.settings.mail_max_attempts)
    await send_completion_email(services, uuid.UUID(batch_id), last_attempt=last)


async def deliver_webhook(context: JobContext, batch_id: str) -> None:
    services = _services(context)
    last = _last_attempt(context, services.settings.webhook_max_attempts)
    await deliver_batch_webhook(services, uuid.UUID(batch_id), last_attempt=last)


async def reconcile(context: JobContext, timestamp: int) -> None:
    await reconcile_once(_services(context))


def register_tasks(app: procrastinate.App, *, reconcile_cron: str) -> None:
    """Register importq's tasks on ``app`` (once per app)."""
    backed_off: tuple[tuple[str, str, Task], ...] = (
        ("check_completion", COMPLETION, check_completion),
        ("aggregate", COMPLETION, aggregate),
        ("send_email", MESSAGES, send_email),
        ("deliver_webhook", WEBHOOKS, deliver_webhook),
    )
    app.task(name="process_chunk", queue=CHUNKS, pass_context=True, retry=CHUNK_RETRY)(
        _in_its_context("process_chunk", process_chunk)
    )
    for name, queue, task in backed_off:
        app.task(name=name, queue=queue, pass_context=True, retry=BACKOFF)(
            _in_its_context(name, task)
        )
    periodic = app.task(name="reconcile", queue=MAINTENANCE, pass_context=True)(
        _in_its_context("reconcile", reconcile)
    )
    app.periodic(cron=reconcile_cron, periodic_id="reconcile")(periodic)


async def _notice_outages(
    call_next: Callable[[], Awaitable[Any]], context: JobContext, _: Any
) -> Any:
    """Tell the process's outage watch the moment a job loses the database."""
    try:
        return await call_next()
    except (ConnectorException, psycopg.OperationalError, PoolTimeout) as error:
        _services(context).outage.noticed(error)
        raise


@dataclass(frozen=True)
class Lane:
    """Queues served by a procrastinate worker of their own, with its own job slots.

    So a stuck mail server holds only email slots, a stuck webhook receiver only webhook
    slots, a big batch's chunks never delay another batch's aggregation, and a small
    batch's chunks always have the express slot.
    """

    name: str
    queues: tuple[str, ...]
    concurrency: int
    #: The connections a job holds at most while it runs. A message job holds one only
    #: to claim and to record its delivery, for milliseconds: none counted. An
    #: aggregation reads a big batch's reports in parts, one connection each.
    connections_per_job: int = 1


# Connections a worker needs besides its listeners and the slots of jobs that hold one:
# heartbeats, fetches, and message jobs' claims and records, which take turns.
SHARED_CONNECTIONS = 4


def worker_lanes(settings: Settings, chunk_concurrency: int) -> tuple[Lane, ...]:
    return (
        Lane("chunks", (CHUNKS, CHUNKS_EXPRESS), chunk_concurrency),
        Lane("express", (CHUNKS_EXPRESS,), 1),
        Lane(
            "completion",
            (COMPLETION, MAINTENANCE),
            settings.completion_concurrency,
            connections_per_job=REPORT_PARTS,
        ),
        Lane("messages", (MESSAGES,), settings.message_concurrency, connections_per_job=0),
        Lane("webhooks", (WEBHOOKS,), settings.message_concurrency, connections_per_job=0),
    )


def worker_connections(lanes: tuple[Lane, ...]) -> int:
    """The pool connections a worker's lanes need at once: each slot's job's, and
    ``SHARED_CONNECTIONS``. (Each lane's listener opens a connection of its own, outside
    the pool.)"""
    held = sum(lane.concurrency * lane.connections_per_job for lane in lanes)
    return held + SHARED_CONNECTIONS


async def _run_lanes(services: Services, lanes: tuple[Lane, ...]) -> None:
    """Run one procrastinate worker per lane until one of them stops, then stop the rest.

    Raises the first error a worker raised. Cancelled, it cancels every worker (each
    lets its jobs finish for ``IMPORTQ_SHUTDOWN_SECONDS``) before it ends.
    """
    settings = services.settings
    workers = [
        asyncio.create_task(
            services.queue.app.run_worker_async(
                name=f"importq-{lane.name}",
                queues=list(lane.queues),
                concurrency=lane.concurrency,
                additional_context={"services": services},
                update_heartbeat_interval=settings.heartbeat_seconds,
                # A new job announces itself. But procrastinate's worker can miss an
                # announcement that arrives while it is fetching, because it clears the
                # event after the fetch. It then waits a whole polling interval. Polling
                # often keeps the hops at a batch's end short: last chunk → check →
                # aggregate → email.
                fetch_job_polling_interval=settings.worker_poll_seconds,
                stalled_worker_timeout=settings.stalled_seconds,
                shutdown_graceful_timeout=settings.shutdown_seconds,
                worker_middleware=[_notice_outages],
                # Signals are the caller's: a stop is a cancel, so that a worker that
                # stops on its own is told apart from one that was asked to.
                install_signal_handlers=False,
            ),
            name=f"worker-{lane.name}",
        )
        for lane in lanes
    ]
    try:
        await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for worker in workers:
            worker.cancel()
        ended = await asyncio.gather(*workers, return_exceptions=True)
    errors = [e for e in ended if isinstance(e, Exception)]
    if errors:
        raise errors[0]


async def run_worker(services: Services, *, concurrency: int) -> None:
    """Run a worker on every importq queue until cancelled; only a cancel stops it.

    The queues are served in lanes (:func:`worker_lanes`): ``concurrency`` chunk jobs,
    ``IMPORTQ_COMPLETION_CONCURRENCY`` completion jobs and ``IMPORTQ_MESSAGE_CONCURRENCY``
    messages at once, each lane a procrastinate worker of its own.

    Cancelled, the worker stops fetching jobs and gives the jobs it holds
    ``IMPORTQ_SHUTDOWN_SECONDS`` to finish; the rest are aborted, and procrastinate
    retries them (with the task's retry wait, 3 s at first), so no one waits for
    stalled-job detection.

    procrastinate's worker stops by itself when it loses the database (its listener,
    heartbeat or a fetch fails). Then this waits, through the process's outage watch,
    until the database answers again, and runs a new worker at once. Jobs the old one
    held stay ``doing`` until reconcile finds its heartbeat stale and retries them. A
    worker that stops while the database answers failed for another reason: that is
    logged with its cause, and the next one starts after a wait that doubles up to a
    minute, so a lasting fault neither spins nor goes unseen.
    """
    app = services.queue.app
    if "process_chunk" not in app.tasks:
        register_tasks(app, reconcile_cron=services.settings.reconcile_cron)
    lanes = worker_lanes(services.settings, concurrency)
    failures = 0
    while True:
        started = time.monotonic()
        reason: BaseException | str
        try:
            await _run_lanes(services, lanes)
            reason = "the worker stopped by itself"
        except (ConnectorException, psycopg.Error) as error:
            reason = error
        _raise_if_cancelled()  # a stop asked for while the database was away
        services.outage.noticed(reason)
        if await services.outage.settled():
            failures = 0
            continue
        if time.monotonic() - started > WORKER_RESTART_LONGEST_WAIT:
            failures = 0  # it ran a good while: the waits start over
        wait = min(2.0**failures, WORKER_RESTART_LONGEST_WAIT)
        failures += 1
        log.error("the worker stopped (%r); a new one starts in %.0f s", reason, wait)
        await asyncio.sleep(wait)


def _raise_if_cancelled() -> None:
    """procrastinate's worker turns a cancel into a clean stop, unless its last words to
    the database fail: then it raises that error and the cancel would be lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
