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
process made it. One :class:`JobWatch` a process listens on one connection of its own
and wakes the streams of that batch; a stream then reads the batch once, on a pooled
connection it gives back at once. No stream polls the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import psycopg
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from importq.api.auth import CurrentUser, ServicesDep
from importq.api.jobs import readable_batch
from importq.api.schemas import errors
from importq.db import database_url
from importq.job_json import Job
from importq.pipeline import batches
from importq.services import Services

router = APIRouter()
log = logging.getLogger(__name__)

CHANNEL = "importq_jobs"
FINAL = frozenset({"completed", "failed", "cancelled"})
EVENTS_PER_SECOND = 4
RECONNECT_SECONDS = 1.0


class JobWatch:
    """The process's one listener on ``importq_jobs``, and the streams it wakes.

    It connects when the first stream subscribes and stays connected; when the
    connection is lost it connects again and wakes every stream, which then reads its
    batch once (a change may have been announced meanwhile).
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._streams: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        #: The process is stopping: streams end (a client resumes elsewhere).
        self.closed = False

    @contextlib.contextmanager
    def subscribe(self, batch_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever the batch may have changed (set at first, too)."""
        if not self.closed and (self._listener is None or self._listener.done()):
            self._listener = asyncio.create_task(self._listen())
        changed = asyncio.Event()
        changed.set()
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

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._wake_all()  # whatever was announced while not listening
                    async for notice in conn.notifies():
                        for changed in self._streams.get(notice.payload, ()):
                            changed.set()
            except psycopg.Error as error:
                log.warning("job events: listening again after %s", error)
                await asyncio.sleep(RECONNECT_SECONDS)

    def _wake_all(self) -> None:
        for streams in self._streams.values():
            for changed in streams:
                changed.set()

    async def close(self) -> None:
        """End every stream and stop listening: the process is stopping, and uvicorn
        would otherwise wait for the streams before it stops."""
        self.closed = True
        self._wake_all()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener


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
        watch = request.app.state.job_watch = JobWatch(database_url(services.settings))
    return watch


def _event(revision: int, job: Job) -> str:
    return f"id: {revision}\nevent: job\ndata: {job.model_dump_json()}\n\n"


async def _events(
    services: Services, watch: JobWatch, batch_id: uuid.UUID, last_seen: int | None
) -> AsyncIterator[str]:
    with watch.subscribe(batch_id) as changed:
        while True:
            changed.clear()
            async with services.pool.connection() as conn:
                row = await batches.get_batch(conn, batch_id)
            if row is None:  # purged meanwhile
                return
            if last_seen is None or row["revision"] > last_seen:
                last_seen = row["revision"]
                yield _event(row["revision"], Job.from_row(row))
            if row["status"] in FINAL or watch.closed:
                return
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), services.settings.events_keep_alive)
                    break
                except TimeoutError:
                    yield ": keep-alive\n\n"
            # Changes come in bursts (a chunk a few ms after another): one event for each.
            await asyncio.sleep(1 / EVENTS_PER_SECOND)


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
    last_seen = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    if last_seen is not None and batch["status"] in FINAL and batch["revision"] <= last_seen:
        return Response(status_code=204)
    stream = _events(services, job_watch(request, services), batch["id"], last_seen)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
