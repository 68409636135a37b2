"""Can one user stall the others? Each scenario is measured on a running service, under
the load and with the same service idle, in one run; see ``scripts/bench.py --scenario``.

- ``health``: ``GET /health`` every 50 ms and a 10-row batch every half second, while a
  crafted 1 MB CSV (quoted cells full of line feeds), a ``punycode`` upload, the
  ``--rows`` CSV, a 100,000-row XLSX and a 200,000-row JSON body are posted at once.
- ``fairness``: 10-row batches, one a quarter of a second after the last completed,
  from the same user, while a ``--rows`` CSV batch is staged and imported.
- ``webhooks``: 10-row batches for a minute while four webhook receivers answer one
  byte every 9 s; each batch to ``completed``, and to its email in the outbox.
- ``cancel``: the ``--rows`` CSV is posted and cancelled once half its rows are
  processed; from the cancel's answer to the batch's ``cancelled``, and whether its
  reports account for every row.
- ``dry-run``: the ``--rows`` CSV imported, then dry-run, each into an emptied table:
  their times from the POST to ``completed``, and whether their summaries agree.
- ``events``: 200 event streams follow the ``--rows`` CSV batch; the CPU time of the
  service's processes against the same import with no stream (each into an emptied
  table), and how late each event arrives after the change it tells of (its job's
  ``updatedAt``).
- ``page``: the job's page open in Chromium while the ``--rows`` CSV batch runs; how late
  the page draws each change after the service stamped it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import (
    CONTENT_TYPES,
    DATA,
    Service,
    cpu_seconds,
    machine,
    seconds_to_completion,
    serving,
    settle_writes,
    wait_for_job,
    write_section,
)
from gen_data import HEADER, entrance_rows, generate

BAR_SECONDS = 1.0
XLSX_ROWS = 100_000
JSON_ROWS = 200_000
TRICKLE_SECONDS = 9.0
RECEIVERS = 4
# Rounds of the upsert scenario, each an import and an upsert.
ROUNDS = 3
WEBHOOK_LOAD_SECONDS = 60.0


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value at least ``share`` of them reach;
    NaN when there are none (a batch too small to give a stream a second event)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {statistics.median(values):.3f} s, p95 {percentile(values, 0.95):.3f} s, "
        f"max {max(values):.3f} s ({len(values)} samples)"
    )


@dataclass
class Sampler:
    """Runs ``measure`` again and again in a thread, ``pause`` seconds apart, keeping
    each value, until stopped."""

    measure: Callable[[], float]
    pause: float
    values: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.values.append(self.measure())
            self._stop.wait(self.pause)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


class Probe:
    """Times requests and small batches against ``service``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.client = httpx.Client(
            base_url=service.base,
            headers={"Authorization": f"Bearer {service.token}"},
            timeout=120,
        )
        self._batches = 0
        self._lock = threading.Lock()

    def health(self) -> float:
        started = time.perf_counter()
        self.client.get("/health")
        return time.perf_counter() - started

    def _small_rows(self) -> list[dict[str, str]]:
        with self._lock:
            self._batches += 1
            batch = self._batches
        rows = entrance_rows(10, duplicates=0, failures=0, seed=batch)
        return [
            {**dict(zip(HEADER, map(str, row), strict=True)), "id": f"small-{batch}-{n}"}
            for n, row in enumerate(rows)
        ]

    def post_small(self, params: dict[str, str] | None = None) -> tuple[str, float, float]:
        """POST a 10-row batch: its status URL, when it was posted (this machine's
        clock), and how long the 202 took."""
        started_at, started = time.time(), time.perf_counter()
        response = self.client.post(
            "/api/v1/entrances/import-rows", json={"data": self._small_rows()}, params=params
        )
        response.raise_for_status()
        return response.json()["statusUrl"], started_at, time.perf_counter() - started

    def small_batch(self) -> float:
        """POST a 10-row batch and return the seconds from the POST to ``completed``."""
        status_url, started_at, _ = self.post_small()
        return seconds_to_completion(wait_for_job(self.client, status_url, 0.05), started_at)

    def small_accept(self) -> float:
        """POST a 10-row batch and return the seconds to its ``202``."""
        return self.post_small()[2]

    def post_file(
        self, path: Path, params: dict[str, str] | None = None
    ) -> tuple[httpx.Response, float]:
        """POST a file; its answer and how long the answer took."""
        started = time.perf_counter()
        with path.open("rb") as handle:
            response = self.client.post(
                "/api/v1/entrances/import-rows",
                content=handle,
                params=params,
                headers={"Content-Type": CONTENT_TYPES[path.suffix.lstrip(".")]},
            )
        return response, time.perf_counter() - started


def _crafted_csv() -> Path:
    """1 MB of records whose quoted description holds 2,000 line feeds each."""
    path = DATA / "crafted-line-feeds.csv"
    if not path.exists():
        record = ",".join(['"x"'] * (len(HEADER) - 1) + ['"' + "\n" * 2_000 + '"']) + "\n"
        count = (1 << 20) // len(record)
        path.write_text(",".join(HEADER) + "\n" + record * count)
    return path


def _cached(rows: int, kind: str) -> Path:
    path = DATA / f"entrances-{rows}.{kind}"
    if not path.exists():
        partial = path.with_name(f"partial-{path.name}")
        if kind == "json":
            records = (dict(zip(HEADER, map(str, r), strict=True)) for r in entrance_rows(rows))
            partial.write_text(json.dumps({"data": list(records)}))
        else:
            generate(partial, rows)
        partial.rename(path)
    return path


def _report(title: str, lines: list[str], command: str, server: str, write: bool) -> None:
    """Print a scenario's lines, and with ``write`` put them in docs/benchmarks.md."""
    print("\n".join(lines))
    if not write:
        return
    write_section(
        "\n".join(
            [
                f"## {title}",
                "",
                f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {server}.",
                "",
                f"Command: `{command}`",
                "",
                *lines,
                "",
            ]
        )
    )


def _verdict(value: float, bar: float) -> str:
    if math.isnan(value):
        return "not measured (no samples: try more --rows)"
    return "met" if value <= bar else "NOT met"


def health(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    crafted, big = _crafted_csv(), _cached(rows, "csv")
    xlsx, body = _cached(XLSX_ROWS, "xlsx"), _cached(JSON_ROWS, "json")
    uploads: list[tuple[str, Path, dict[str, str]]] = [
        ("crafted 1 MB CSV", crafted, {}),
        ("1 MB CSV with encoding=punycode", crafted, {"encoding": "punycode"}),
        (f"{rows:,}-row CSV", big, {}),
        (f"{XLSX_ROWS:,}-row XLSX", xlsx, {}),
        (f"{JSON_ROWS:,}-row JSON", body, {}),
    ]
    with serving(env) as service:
        probe = Probe(service)
        with Sampler(probe.health, 0.05) as idle_health, Sampler(probe.small_accept, 0.5):
            time.sleep(5)
        with Sampler(probe.small_accept, 0.5) as idle_small:
            time.sleep(5)
        answers: dict[str, tuple[int, float]] = {}

        def post(name: str, path: Path, params: dict[str, str]) -> None:
            response, seconds = probe.post_file(path, params)
            answers[name] = (response.status_code, seconds)

        posting = [threading.Thread(target=post, args=upload) for upload in uploads]
        with Sampler(probe.health, 0.05) as loaded, Sampler(probe.small_accept, 0.5) as small:
            for thread in posting:
                thread.start()
            for thread in posting:
                thread.join()
    lines = [
        "| measure | idle | while the uploads are read |",
        "|---|---|---|",
        f"| `GET /health` | {summary(idle_health.values)} | {summary(loaded.values)} |",
        f"| 10-row batch POST → `202` | {summary(idle_small.values)} | {summary(small.values)} |",
        "",
        "The uploads, posted at once: "
        + "; ".join(f"{n}: {answers[n][0]} after {answers[n][1]:.2f} s" for n, *_ in uploads)
        + ".",
        "",
        f"Bar: `/health` within {BAR_SECONDS:g} s at p95 while they are read: "
        f"{_verdict(percentile(loaded.values, 0.95), BAR_SECONDS)}.",
    ]
    _report("Responsiveness while crafted and big uploads are read", lines, command, server, write)


def fairness(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    big = _cached(rows, "csv")
    with serving(env) as service:
        probe = Probe(service)
        idle = [probe.small_batch() for _ in range(10)]
        outcome: dict[str, Any] = {}

        def import_big() -> None:
            outcome["started_at"] = time.time()
            response, outcome["accepted"] = probe.post_file(big)
            if response.status_code != 202:
                raise SystemExit(f"the big upload was refused: {response.text}")
            outcome["status_url"] = response.json()["statusUrl"]

        posting = threading.Thread(target=import_big)
        with Sampler(probe.small_batch, 0.25) as loaded:
            posting.start()
            posting.join()
            big_job = wait_for_job(probe.client, outcome["status_url"])
    big_seconds = seconds_to_completion(big_job, outcome["started_at"])
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| 10-row batch POST → `completed`, idle | {summary(idle)} |",
        f"| the same, from the big POST to its `completed` | {summary(loaded.values)} |",
        f"| the {rows:,}-row batch: `202` / `completed` | {outcome['accepted']:.2f} s / "
        f"{big_seconds:.2f} s |",
        "",
        f"Bar: the 10-row batches within {BAR_SECONDS:g} s at p95: "
        f"{_verdict(percentile(loaded.values, 0.95), BAR_SECONDS)}.",
    ]
    _report(f"10-row batches behind a {rows:,}-row batch", lines, command, server, write)


@contextlib.contextmanager
def trickling_receivers(count: int, pause: float) -> Iterator[tuple[list[str], list[int]]]:
    """``count`` HTTP servers on loopback that read a request, then answer one byte
    every ``pause`` seconds; their URLs and how many requests each got."""
    loop = asyncio.new_event_loop()
    requests = [0] * count
    servers: list[asyncio.Server] = []

    def handler(index: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            requests[index] += 1
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
            # Cut off by the client, or cancelled at the scenario's end.
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                for byte in answer:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(pause)

        return handle

    async def start() -> None:
        for index in range(count):
            servers.append(await asyncio.start_server(handler(index), "127.0.0.1", 0))

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result()
    urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}/hook" for s in servers]

    async def stop() -> None:
        for server in servers:
            server.close()
        answering = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in answering:
            task.cancel()
        await asyncio.gather(*answering, return_exceptions=True)

    try:
        yield urls, requests
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def _email_seconds(probe: Probe, outbox: Path) -> float:
    """POST a 10-row batch, and return the seconds from its ``completed`` to its email
    in the outbox."""
    status_url, _, _ = probe.post_small()
    job = wait_for_job(probe.client, status_url, 0.05)
    batch_id = job["batchId"]
    completed = datetime.fromisoformat(job["completedAt"]).timestamp()
    while not (found := [p for p in outbox.glob("*.eml") if batch_id in p.name]):
        time.sleep(0.05)
    return found[0].stat().st_mtime - completed


def webhooks(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    env = {**env, "IMPORTQ_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
    with (
        trickling_receivers(RECEIVERS, TRICKLE_SECONDS) as (urls, requests),
        serving(env) as service,
    ):
        probe = Probe(service)
        outbox = service.data_dir / "outbox"
        idle = [probe.small_batch() for _ in range(10)]
        idle_email = [_email_seconds(probe, outbox) for _ in range(10)]
        for url in urls:
            probe.post_small({"callbackUrl": url})
        while not all(requests):
            time.sleep(0.1)
        with (
            Sampler(probe.small_batch, 0.5) as loaded,
            Sampler(lambda: _email_seconds(probe, outbox), 0.5) as email,
        ):
            time.sleep(WEBHOOK_LOAD_SECONDS)
        attempts = sum(requests)
    delay = percentile(loaded.values, 0.95) - percentile(idle, 0.95)
    lines = [
        "| measure | idle | while the receivers trickle |",
        "|---|---|---|",
        f"| 10-row batch POST → `completed` | {summary(idle)} | {summary(loaded.values)} |",
        f"| its `completed` → its email in the outbox | {summary(idle_email)} | "
        f"{summary(email.values)} |",
        "",
        f"{RECEIVERS} receivers answered one byte every {TRICKLE_SECONDS:g} s; they were sent "
        f"{attempts} webhook POSTs in all (each cut off at `IMPORTQ_WEBHOOK_TIMEOUT`, then "
        "retried).",
        "",
        f"Bar: other batches delayed by at most {BAR_SECONDS:g} s (p95 under load − p95 idle "
        f"= {delay:.3f} s): {_verdict(delay, BAR_SECONDS)}.",
    ]
    _report("10-row batches while four webhook receivers trickle", lines, command, server, write)


CANCEL_BAR_SECONDS = 2.0


def cancel(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    big = _cached(rows, "csv")
    with serving(env) as service:
        probe = Probe(service)
        response, accepted = probe.post_file(big)
        if response.status_code != 202:
            raise SystemExit(f"the upload was refused: {response.text}")
        status_url = response.json()["statusUrl"]
        while (processed := probe.client.get(status_url).json()["progress"]["processedRows"]) < (
            rows // 2
        ):
            time.sleep(0.05)
        asked_at = time.time()
        answer = probe.client.post(f"{status_url}/cancel")
        if answer.status_code != 202:
            raise SystemExit(f"the cancel was refused: {answer.text}")
        # The answer counts the rows of the chunks the cancel settled; these were run.
        at_cancel = processed
        ended = wait_for_job(probe.client, status_url, 0.05)
    seconds = seconds_to_completion(ended, asked_at)
    summary_ = ended["result"]["summary"]
    # The summary also splits the successes (inserted, updated…): those are counted once.
    accounted = sum(summary_[kind] for kind in ("successes", "duplicates", "failures"))
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| the {rows:,}-row batch: `202` | {accepted:.2f} s |",
        f"| rows processed when the cancel was asked | {at_cancel:,} |",
        f"| cancel → `{ended['status']}` | {seconds:.2f} s |",
        f"| summary | {summary_} ({accounted:,} of {rows:,} rows) |",
        "",
        f"Bar: `cancelled` within {CANCEL_BAR_SECONDS:g} s, every row in one report: "
        f"{_verdict(seconds, CANCEL_BAR_SECONDS) if accounted == rows else 'NOT met'}.",
    ]
    _report(f"Cancelling a {rows:,}-row batch half-way", lines, command, server, write)


STREAMS = 200
EVENTS_CPU_BAR = 0.05  # of a core, over the import's time


def _service_cpu(service: Service) -> float:
    """CPU seconds the service's processes (and their children) have used so far."""
    return cpu_seconds({"service": [p.pid for p in service.processes]})["service"]


async def _follow(base: str, token: str, status_url: str, lags: list[float]) -> int:
    """Follow one batch's events to the end; the lateness of each event after the first
    (which tells of the batch as the stream opened, not of a change) into ``lags``."""
    events = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=None) as client,
        client.stream("GET", f"{status_url}/events") as stream,
    ):
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                job = json.loads(line[len("data: ") :])
                changed = datetime.fromisoformat(job["updatedAt"]).timestamp()
                if events:
                    lags.append(time.time() - changed)
                events += 1
    return events


def _import_cpu(
    service: Service, big: Path, streams: int, lags: list[float]
) -> tuple[float, float, int]:
    """Import ``big`` with ``streams`` event streams following it: the service's CPU
    seconds, the import's seconds, and the events the streams got."""
    probe = Probe(service)
    before = _service_cpu(service)
    started = time.perf_counter()
    response, _ = probe.post_file(big)
    if response.status_code != 202:
        raise SystemExit(f"the upload was refused: {response.text}")
    status_url = response.json()["statusUrl"]

    async def all_streams() -> list[int]:
        return await asyncio.gather(
            *(_follow(service.base, service.token, status_url, lags) for _ in range(streams))
        )

    counts = asyncio.run(all_streams()) if streams else []
    wait_for_job(probe.client, status_url, 0.2)
    return _service_cpu(service) - before, time.perf_counter() - started, sum(counts)


def events(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    big = _cached(rows, "csv")
    lags: list[float] = []

    with serving(env) as service:
        _emptied(env)
        alone_cpu, alone_seconds, _ = _import_cpu(service, big, 0, [])
        _emptied(env)
        followed_cpu, followed_seconds, received = _import_cpu(service, big, STREAMS, lags)
    extra = (followed_cpu - alone_cpu) / followed_seconds
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| the {rows:,}-row import alone: CPU / wall | {alone_cpu:.2f} s / "
        f"{alone_seconds:.2f} s |",
        f"| followed by {STREAMS} streams: CPU / wall | {followed_cpu:.2f} s / "
        f"{followed_seconds:.2f} s |",
        f"| the streams' cost | {extra * 100:.1f} % of a core |",
        f"| events received | {received:,} ({received / STREAMS:.1f} a stream) |",
        f"| event after its change (the first of each stream left out) | {summary(lags)} |",
        "",
        f"Bar: the streams cost at most {EVENTS_CPU_BAR:.0%} of a core: "
        f"{_verdict(extra, EVENTS_CPU_BAR)}; events within 0.5 s at p95: "
        f"{_verdict(percentile(lags, 0.95), 0.5)}.",
    ]
    _report(
        f"{STREAMS} event streams following a {rows:,}-row batch", lines, command, server, write
    )


def _emptied(env: dict[str, str]) -> None:
    """The target table emptied: the next import stores every row anew."""
    with psycopg.connect(env["IMPORTQ_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("TRUNCATE entrances")


def dry_run(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    big = _cached(rows, "csv")
    seconds: dict[str, float] = {}
    summaries: dict[str, Any] = {}
    with serving(env) as service:
        probe = Probe(service)
        for kind, params in (("import", None), ("dry run", {"dryRun": "true"})):
            _emptied(env)
            started_at = time.time()
            response, _ = probe.post_file(big, params)
            if response.status_code != 202:
                raise SystemExit(f"the upload was refused: {response.text}")
            job = wait_for_job(probe.client, response.json()["statusUrl"], 0.2)
            seconds[kind] = seconds_to_completion(job, started_at)
            summaries[kind] = job["result"]["summary"]
    ratio = seconds["dry run"] / seconds["import"]
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| the import: POST → `completed` | {seconds['import']:.2f} s |",
        f"| the dry run of the same file into the same (empty) table | "
        f"{seconds['dry run']:.2f} s ({ratio:.2f}×) |",
        f"| summaries equal | {summaries['import'] == summaries['dry run']} |",
        "",
        f"Bar: the dry run no slower than the import: {_verdict(ratio, 1.0)}.",
    ]
    _report(f"A dry run of {rows:,} rows against its import", lines, command, server, write)


def _half_stored(env: dict[str, str]) -> None:
    """Of the rows an import stored, every other one deleted and the rest changed, then
    vacuumed: an upsert of the same file updates half its rows and inserts the others."""
    with psycopg.connect(env["IMPORTQ_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("DELETE FROM entrances WHERE target_id % 2 = 0")
        conn.execute("UPDATE entrances SET label = coalesce(label, '') || '*'")
        conn.execute("VACUUM ANALYZE entrances")


def upsert(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    """An upsert of a file half of whose keys are stored, against its import into an
    empty table, in rounds that alternate the two."""
    big = _cached(rows, "csv")
    seconds: dict[str, list[float]] = {"import": [], "upsert": []}
    summaries: dict[str, Any] = {}
    with serving(env) as service:
        probe = Probe(service)
        for _ in range(ROUNDS):
            for kind in seconds:
                if kind == "import":
                    _emptied(env)
                else:
                    _half_stored(env)
                settle_writes()
                started_at = time.time()
                response, _ = probe.post_file(big, {"mode": "upsert"} if kind == "upsert" else {})
                if response.status_code != 202:
                    raise SystemExit(f"the upload was refused: {response.text}")
                job = wait_for_job(probe.client, response.json()["statusUrl"], 0.2)
                seconds[kind].append(seconds_to_completion(job, started_at))
                summaries[kind] = job["result"]["summary"]
    median = {kind: statistics.median(times) for kind, times in seconds.items()}
    ratio = median["upsert"] / median["import"]
    lines = [
        "| measure | rounds | median |",
        "|---|---|---|",
        f"| the import into an empty table: POST → `completed` | "
        f"{', '.join(f'{t:.2f}' for t in seconds['import'])} s | {median['import']:.2f} s |",
        f"| the upsert, half the keys stored (changed) | "
        f"{', '.join(f'{t:.2f}' for t in seconds['upsert'])} s | {median['upsert']:.2f} s "
        f"({ratio:.2f}×) |",
        "",
        f"The upsert's summary: {json.dumps(summaries['upsert'])}.",
        "",
        f"Bar: the upsert no slower than 1.5× the import: {_verdict(ratio, 1.5)}.",
    ]
    _report(f"An upsert of {rows:,} rows, half of them stored", lines, command, server, write)


# Run in the page before its own script: each job event, once the page has drawn it (a
# task after the page's own listener), with the change's time as the service stamped it.
_PAGE_RECORDER = """
window.importqShown = [];
const NativeEventSource = window.EventSource;
window.EventSource = function (url, options) {
  const source = new NativeEventSource(url, options);
  source.addEventListener("job", function (event) {
    const updatedAt = JSON.parse(event.data).updatedAt;
    setTimeout(function () { window.importqShown.push([Date.now(), updatedAt]); }, 0);
  });
  return source;
};
"""


def page(env: dict[str, str], rows: int, command: str, server: str, write: bool) -> None:
    """A job's page open in Chromium while its batch runs: how long after each change
    (a chunk counted, the end) the page showed it."""
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's Chromium is needed: apt-get install chromium")
    big = _cached(rows, "csv")
    with serving(env) as service, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page()
        tab.add_init_script(_PAGE_RECORDER)
        tab.goto(f"{service.base}/login")
        tab.get_by_label("API token").fill(service.token)
        tab.get_by_role("button", name="Sign in").click()
        tab.wait_for_url(f"{service.base}/import")
        response, _ = Probe(service).post_file(big)
        if response.status_code != 202:
            raise SystemExit(f"the upload was refused: {response.text}")
        tab.goto(f"{service.base}/jobs/{response.json()['batchId']}")
        expect(tab.get_by_role("progressbar")).to_have_attribute(
            "aria-valuenow", "100", timeout=600_000
        )
        tab.wait_for_timeout(200)  # the last event's record, a task after its drawing
        shown = tab.evaluate("window.importqShown")
        browser.close()
    # The first event tells of the batch as the page opened, not of a change.
    lags = [
        when / 1000 - datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
        for when, updated in shown[1:]
    ]
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| events the page drew | {len(shown):,} |",
        f"| drawn after the change (the first left out) | {summary(lags)} |",
        "",
        f"Bar: the page updates within 0.5 s of each chunk finishing (p95): "
        f"{_verdict(percentile(lags, 0.95), 0.5)}.",
    ]
    _report(f"A job's page following a {rows:,}-row batch", lines, command, server, write)


SCENARIOS = {
    "dry-run": dry_run,
    "upsert": upsert,
    "page": page,
    "health": health,
    "fairness": fairness,
    "webhooks": webhooks,
    "cancel": cancel,
    "events": events,
}
