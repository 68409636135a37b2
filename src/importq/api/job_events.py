"""``GET /api/v1/jobs/{batchId}/events``: a batch's job JSON as server-sent events.

Each event is ``id: <revision>``, ``event: job``, ``data: <the job JSON>``: the first at
once, then one per change of the batch, at most :data:`EVENTS_PER_SECOND` a second (the
changes between two are folded into the second), and ``: keep-alive`` every
``IMPORTQ_EVENTS_KEEP_ALIVE`` seconds (15) while nothing changes. The stream ends after
the event whose status is final. ``Last-Event-ID`` resumes: an event comes at once only
if the batch changed since; a finished batch with nothing new answers ``204``, which
tells a browser's EventSource not to come back.

Changes come from PostgreSQL: every update of a batch gets the next ``revision`` and is
announced on the channel ``importq_jobs`` at its commit (migration 0013), whichever
process made it. One :class:`JobWatch` a process listens on one connection of its own,
reads a changed batch once for all the streams that follow it, on a pooled connection
it gives back at once, and wakes them. No stream polls the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import psycopg
import psycopg_pool
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from importq.accounts import user_for_token_id
from importq.api.auth import CurrentUser, ServicesDep, admitted_user
from importq.api.jobs import readable_batch
from importq.api.schemas import errors
from importq.db import Pool, database_url
from importq.errors import Refusal
from importq.job_json import Job
from importq.pipeline import batches
from importq.services import Services

router = APIRouter()
log = logging.getLogger(__name__)

CHANNEL = "importq_jobs"
FINAL = frozenset({"completed", "failed", "cancelled"})
EVENTS_PER_SECOND = 4
RECONNECT_SECONDS = 1.0
LISTENER_CHECK_SECONDS = 30.0


class JobWatch:
    """The process's one listener on ``importq_jobs``, and the streams it wakes.

    A change of a batch that streams follow is read once for all of them: a reader
    waits a moment (a burst of chunk commits is one read), reads the batch, keeps the
    row (:meth:`latest`) and wakes the batch's streams. At most
    :data:`EVENTS_PER_SECOND` reads a batch a second, however many streams follow it.

    It connects when the first stream subscribes and stays connected; when the
    connection is lost it connects again and reads every followed batch once (a change
    may have been announced meanwhile).
    """

    def __init__(self, url: str, pool: Pool) -> None:
        self._url = url
        self._pool = pool
        self._streams: dict[str, set[asyncio.Event]] = {}
        self._latest: dict[str, dict[str, Any]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # announced while being read: read once more
        self._listener: asyncio.Task[None] | None = None
        #: The process is stopping: streams end (a client resumes elsewhere).
        self.closed = False

    @contextlib.contextmanager
    def subscribe(self, batch_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever :meth:`latest` has a newer read of the batch."""
        if not self.closed and (self._listener is None or self._listener.done()):
            # Of the process, not of the request that happens to start it: a fresh
            # context, so its log lines name no one's request.
            self._listener = asyncio.create_task(self._listen(), context=contextvars.Context())
        changed = asyncio.Event()
        key = str(batch_id)
        self._streams.setdefault(key, set()).add(changed)
        try:
            yield changed
        finally:
            streams = self._streams.get(key)
            if streams is not None:
                streams.discard(changed)
                if not streams:
                    del self._streams[key]
                    self._latest.pop(key, None)
                    self._again.discard(key)
                    reader = self._readers.pop(key, None)
                    if reader is not None:
                        reader.cancel()  # its row could land after a newer reader's

    def latest(self, batch_id: uuid.UUID) -> dict[str, Any] | None:
        """The batch as last read for its streams (None before the first read)."""
        return self._latest.get(str(batch_id))

    def _announced(self, key: str) -> None:
        if key not in self._streams or self.closed:
            return
        reader = self._readers.get(key)
        if reader is None or reader.done():
            self._readers[key] = asyncio.create_task(self._read(key), context=contextvars.Context())
        else:
            self._again.add(key)

    async def _read(self, key: str) -> None:
        """Read the batch for its streams until no announcement came during a read. A
        failed read is tried again: its change may be the batch's last."""
        while key in self._streams and not self.closed:
            await asyncio.sleep(1 / EVENTS_PER_SECOND)  # the rest of a burst comes first
            self._again.discard(key)
            try:
                async with self._pool.connection() as conn:
                    row = await batches.get_batch(conn, uuid.UUID(key))
            except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
                log.warning("job events: batch %s not read, trying again: %s", key, error)
                self._again.add(key)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            held = self._latest.get(key)
            if row is not None and (held is None or row["revision"] > held["revision"]):
                self._latest[key] = row
                for changed in self._streams.get(key, ()):
                    changed.set()
            if key not in self._again:
                return

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    for key in list(self._streams):  # announced while not listening
                        self._announced(key)
                    while True:
                        async for notice in conn.notifies(timeout=LISTENER_CHECK_SECONDS):
                            self._announced(notice.payload)
                        # Quiet for a while: is the connection still there? A silently
                        # dropped one would hear nothing more, and raise nothing.
                        async with asyncio.timeout(LISTENER_CHECK_SECONDS):
                            await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as error:
                log.warning("job events: listening again after %r", error)
                await asyncio.sleep(RECONNECT_SECONDS)

    async def close(self) -> None:
        """End every stream and stop listening: the process is stopping, and uvicorn
        would otherwise wait for the streams before it stops."""
        self.closed = True
        for streams in self._streams.values():
            for changed in streams:
                changed.set()
        tasks = [t for t in (self._listener, *self._readers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# One event, as OpenAPI 3.1 describes a text/event-stream: the schema of each event.
_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The batch's revision"},
        "event": {"const": "job"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/Job"},
        },
    },
}


def job_watch(request: Request, services: Services) -> JobWatch:
    watch: JobWatch | None = request.app.state.job_watch
    if watch is None:
        watch = JobWatch(database_url(services.settings), services.pool)
        request.app.state.job_watch = watch
    return watch


def _event(revision: int, job: Job) -> str:
    return f"id: {revision}\nevent: job\ndata: {job.model_dump_json()}\n\n"


async def _still_admitted(services: Services, token_id: uuid.UUID | None) -> bool:
    """Whether the stream's caller still gets in: their token (or web session's token)
    neither revoked nor expired, their user not disabled."""
    if token_id is None:
        return True
    try:
        await admitted_user(services, lambda conn: user_for_token_id(conn, token_id))
    except Refusal:
        return False
    return True


async def _events(
    services: Services,
    watch: JobWatch,
    batch_id: uuid.UUID,
    last_seen: int | None,
    token_id: uuid.UUID | None,
) -> AsyncIterator[str]:
    """The batch's events. The caller is checked again at each keep-alive: a stream ends
    once their token is revoked or expires or their user is disabled, as a request
    would be refused (the client's reconnection then gets its 401)."""
    with watch.subscribe(batch_id) as changed:
        # The first read is the stream's own: the batch as it is when the stream opens.
        async with services.pool.connection() as conn:
            row = await batches.get_batch(conn, batch_id)
        while row is not None:
            if last_seen is None or row["revision"] > last_seen:
                last_seen = row["revision"]
                yield _event(row["revision"], Job.from_row(row))
            if row["status"] in FINAL or watch.closed:
                return
            while not changed.is_set():
                try:
                    await asyncio.wait_for(changed.wait(), services.settings.events_keep_alive)
                except TimeoutError:
                    if not await _still_admitted(services, token_id):
                        return
                    yield ": keep-alive\n\n"
            changed.clear()
            row = watch.latest(batch_id) or row


@router.get(
    "/api/v1/jobs/{batch_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events, each the batch's job JSON at a revision",
            "content": {"text/event-stream": {"schema": _EVENT}},
        },
        204: {"description": "The batch is finished and nothing changed since Last-Event-ID"},
        **errors(403, 404),
    },
)
async def job_events(
    batch_id: str,
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> Response:
    batch = await readable_batch(services, user, batch_id)
    watch = job_watch(request, services)
    if watch.closed:  # stopping: the client resumes on another node, or after the restart
        raise Refusal(
            503, "shutting_down", "The service is stopping; follow the batch again shortly."
        )
    last_seen = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    if last_seen is not None and batch["status"] in FINAL and batch["revision"] <= last_seen:
        return Response(status_code=204)
    stream = _events(services, watch, batch["id"], last_seen, user.token_id)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
