"""Chaos rounds: one import at a time under a random fault, each checked for exact
accounting, and the results written into docs/reliability.md.

    python scripts/chaos.py --rounds 20 [--rows 200000] [--seed 1] [--faults a,b]
                            [--no-write]

One service for all rounds, under chaos-data/ and on its default settings: ``importq
serve`` on its embedded PostgreSQL, a separate ``importq worker``, email over SMTP to an
aiosmtpd server this script runs. A first round without a fault gives the outcome every
round must match. Then each round empties the target table, imports the same CSV, and
once its chunks are running injects one fault:

- ``kill_service``: SIGKILL of ``serve``'s whole process group, then a restart;
- ``kill_worker``: SIGKILL of the separate worker, then a new one;
- ``restart_postgres``: ``pg_ctl restart -m fast`` of the embedded server;
- ``storage_down``: the local storage folder unusable for 30 s;
- ``smtp_down``: the mail server gone for 30 s;
- ``postgres_down`` (only when named in ``--faults``): the embedded server stopped for
  60 s, then started again.

A round is exact when the batch completes with the first round's counts, its three
reports hold every line once, the target table holds exactly the imported rows, and
the batch has one notification and one email. The recovery time is from the end of the
fault (the process started again, the server back, the outage over) until the batch has
completed and its email has arrived.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import psycopg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench import free_port, machine, wait_until_ready  # noqa: E402
from gen_data import generate  # noqa: E402
from importq.db import (  # noqa: E402
    embedded_database_url,
    embedded_pg_ctl,
    start_embedded_server,
)

DATA = ROOT / "chaos-data"
RESULTS = ROOT / "docs" / "reliability.md"
FAULTS = ("kill_service", "kill_worker", "restart_postgres", "storage_down", "smtp_down")
OUTAGE_SECONDS = 30
SETTLE_SECONDS = 5
# Each report's kind in the job JSON's reportUrls, and its count in the summary.
REPORTS = {"success": "successes", "duplicates": "duplicates", "failures": "failures"}
DATABASE_OUTAGE_SECONDS = 60
ROUND_SECONDS = 600  # a round that has not ended by then failed


class Mailbox:
    """An SMTP server on loopback that keeps every message it is given, and can be
    stopped and started again on the same port."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.port = free_port()
        self._controller: Controller | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(envelope.content)
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        assert self._controller is not None
        self._controller.stop()

    def count(self, message_id: str) -> int:
        return sum(message_from_bytes(raw)["Message-ID"] == message_id for raw in self.messages)


class Service:
    """``importq serve`` and one ``importq worker`` on one data dir."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.env = env
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env["IMPORTQ_PUBLIC_URL"] = self.url
        self.serve: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def _spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        with (self.data_dir / log).open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "importq.cli", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_serve(self) -> None:
        self.serve = self._spawn("serve", "--port", str(self.port), log="serve.log")
        wait_until_ready(self.serve, self.url, self.data_dir / "serve.log")

    def start_worker(self) -> None:
        self.worker = self._spawn("worker", log="worker.log")

    def kill(self, process: subprocess.Popen[bytes] | None) -> None:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for process in (self.worker, self.serve):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.kill(process)


@dataclass
class Round:
    number: int
    fault: str
    at_fraction: float  # of the rows processed when the fault came
    recovery_seconds: float  # from the end of the fault to the batch's end and email
    exact: bool
    problems: list[str]


def _scalar(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None


def _job(client: httpx.Client, batch_id: str) -> dict[str, Any] | None:
    """The job JSON, or None while the service does not answer (it may be restarting)."""
    try:
        response = client.get(f"/api/v1/jobs/{batch_id}")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    job: dict[str, Any] = response.json()
    return job


def _wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _report_lines(client: httpx.Client, url: str | None) -> list[int]:
    """The ``line`` column of a report (its first), downloaded through its link."""
    if url is None:
        return []
    text = client.get(url).content.decode("utf-8-sig")
    return [int(record[0]) for record in list(csv.reader(io.StringIO(text, newline="")))[1:]]


def run_round(
    number: int,
    fault: str,
    service: Service,
    client: httpx.Client,
    upload: Path,
    rows: int,
    url: str,
    mailbox: Mailbox,
    expected: dict[str, int] | None,
    rng: random.Random,
) -> tuple[Round, dict[str, int]]:
    """Import ``upload`` once under ``fault`` (``none``: no fault) and check the outcome."""
    _scalar(url, "TRUNCATE entrances")
    with upload.open("rb") as body:
        response = client.post(
            "/api/v1/entrances/import-rows",
            content=body,
            params={"fileName": upload.name},
            headers={"Content-Type": "text/csv"},
        )
    response.raise_for_status()
    batch_id = response.json()["batchId"]
    at = rng.uniform(0.05, 0.6)

    def far_enough() -> bool:
        job = _job(client, batch_id)
        return job is not None and (
            job["status"] != "active" or job["progress"]["processedRows"] >= at * rows
        )

    _wait_for(far_enough, ROUND_SECONDS, "the batch never got going")
    job = _job(client, batch_id)
    assert job is not None
    fraction = job["progress"]["processedRows"] / rows
    # A fault that comes after the chunks are done proves less: such a round says so.
    exercised = job["status"] == "active"
    pg_dir = service.data_dir / "pg"
    files = service.data_dir / "files"
    if fault == "kill_service":
        service.kill(service.serve)
        service.start_serve()
    elif fault == "kill_worker":
        service.kill(service.worker)
        service.start_worker()
    elif fault == "restart_postgres":
        embedded_pg_ctl(pg_dir, "restart", "-m", "fast")
    elif fault == "postgres_down":
        embedded_pg_ctl(pg_dir, "stop", "-m", "fast")
        time.sleep(DATABASE_OUTAGE_SECONDS)
        start_embedded_server(pg_dir)
    elif fault == "storage_down":
        away = files.with_name("files-away")
        files.rename(away)
        files.write_text("storage is down")
        time.sleep(OUTAGE_SECONDS)
        files.unlink()
        away.rename(files)
    elif fault == "smtp_down":
        mailbox.stop()
        time.sleep(OUTAGE_SECONDS)
        mailbox.start()
    ended = time.monotonic()  # the process restarted, the server or the outage over

    def finished() -> bool:
        job = _job(client, batch_id)
        return job is not None and job["status"] in ("completed", "failed")

    _wait_for(finished, ROUND_SECONDS, "the batch never finished")
    job = _job(client, batch_id)
    assert job is not None
    problems: list[str] = []
    summary: dict[str, int] = job["result"]["summary"] if job["result"] else {}
    if job["status"] != "completed":
        problems.append(f"ended {job['status']}")
    if expected is not None and summary != expected:
        problems.append(f"counts {summary} instead of {expected}")
    links = job["result"]["reportUrls"] if job["result"] else {}
    reported = {
        outcome: _report_lines(client, links.get(kind)) for kind, outcome in REPORTS.items()
    }
    for outcome, report in reported.items():
        if len(report) != summary.get(outcome):
            problems.append(f"{len(report)} lines in the {outcome} report")
    lines = sorted(line for report in reported.values() for line in report)
    if lines != list(range(2, rows + 2)):
        problems.append(f"the reports hold {len(lines)} lines, {len(set(lines))} distinct")
    stored = _scalar(url, "SELECT count(*) FROM entrances")
    if stored != summary.get("successes"):
        problems.append(f"{stored} rows stored for {summary.get('successes')} successes")
    message_id = f"<import-{batch_id}@importq>"
    with contextlib.suppress(TimeoutError):  # counted below
        _wait_for(lambda: mailbox.count(message_id) >= 1, ROUND_SECONDS, "no email")
    recovery = time.monotonic() - ended  # the batch finished and its email arrived
    # A second email or notice would come from a job run twice: give it time to.
    time.sleep(SETTLE_SECONDS)
    if mailbox.count(message_id) != 1:
        problems.append(f"{mailbox.count(message_id)} emails")
    notices = _scalar(url, "SELECT count(*) FROM notifications WHERE batch_id = %s", batch_id)
    if notices != 1:
        problems.append(f"{notices} notifications")
    for name, process in (("serve", service.serve), ("the worker", service.worker)):
        if process is None or process.poll() is not None:
            problems.append(f"{name} is not running")
    if not exercised:
        problems.append("not exercised: the chunks were done before the fault")
    outcome = Round(number, fault, fraction, recovery, not problems, problems)
    return outcome, summary


INTRO = """# Reliability

Each section is written by `scripts/chaos.py`; rerun its command to reproduce it. Each
round imports the same CSV under one random fault, on the service's default settings
(`IMPORTQ_STALLED_SECONDS` 30, reconcile every 15 s), and is exact when the batch
completes with the fault-free round's counts, its reports hold every line once, the
target table holds exactly the imported rows, and it has one notification and one email.
Recovery is the time from the end of the fault (the process started again, the server
back, the outage over) until the batch has completed and its email has arrived.
"""


def record(rounds: list[Round], command: str, rows: int, seed: int, faults: list[str]) -> None:
    """Write the rounds into docs/reliability.md, replacing the section of the same
    faults and size."""
    exact = sum(r.exact for r in rounds)
    lines = [
        f"## {rows:,} rows a round; faults: {', '.join(faults)}",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; embedded",
        f"PostgreSQL; seed {seed}.",
        "",
        f"Command: `{command}`",
        "",
        f"**{exact} of {len(rounds)} rounds exact.**",
        "",
        "| round | fault | rows processed when it came | recovery | exact |",
        "|---|---|---|---|---|",
    ]
    for r in rounds:
        verdict = "yes" if r.exact else "NO: " + "; ".join(r.problems)
        lines.append(
            f"| {r.number} | {r.fault} | {r.at_fraction:.0%} | {r.recovery_seconds:.1f} s "
            f"| {verdict} |"
        )
    lines += ["", "Recovery by fault (slowest):", ""]
    for fault in faults:
        times = [r.recovery_seconds for r in rounds if r.fault == fault]
        if times:
            lines.append(f"- `{fault}`: {len(times)} rounds, slowest {max(times):.1f} s")
    section = "\n".join(lines) + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else INTRO
    heading = lines[0]
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help="comma-separated faults to draw from"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    faults = args.faults.split(",")
    unknown = set(faults) - {*FAULTS, "postgres_down"}
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")

    DATA.mkdir(exist_ok=True)
    upload = DATA / f"entrances-{args.rows}.csv"
    if not upload.exists():
        generate(upload, args.rows, seed=args.seed)
    data_dir = DATA / "run"
    if (data_dir / "pg" / "postmaster.pid").exists():  # a server an earlier run left
        with contextlib.suppress(subprocess.CalledProcessError):
            embedded_pg_ctl(data_dir / "pg", "stop", "-m", "fast")
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir()

    mailbox = Mailbox()
    mailbox.start()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("IMPORTQ_") and key != "AZURE_STORAGE_CONNECTION_STRING"
    }
    env |= {
        "IMPORTQ_DATA_DIR": str(data_dir),
        "IMPORTQ_SMTP_URL": f"smtp+plain://127.0.0.1:{mailbox.port}",
        "IMPORTQ_EMBEDDED_SHARED_BUFFERS": "256MB",
    }
    service = Service(env, data_dir)
    service.start_serve()
    service.start_worker()
    url = embedded_database_url(data_dir / "pg")
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "importq.cli",
            "users",
            "create",
            "chaos",
            "--email",
            "chaos@example.org",
        ],
        env=service.env,
        capture_output=True,
        text=True,
        check=True,
    )
    headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
    rounds: list[Round] = []
    try:
        with httpx.Client(base_url=service.url, headers=headers, timeout=600) as client:
            first, expected = run_round(
                0, "none", service, client, upload, args.rows, url, mailbox, None, rng
            )
            print(f"round 0 (no fault): {expected}, exact: {first.exact} {first.problems}")
            if not first.exact:
                raise SystemExit("the fault-free round is not exact")
            for number in range(1, args.rounds + 1):
                fault = rng.choice(faults)
                outcome, _ = run_round(
                    number,
                    fault,
                    service,
                    client,
                    upload,
                    args.rows,
                    url,
                    mailbox,
                    expected,
                    rng,
                )
                rounds.append(outcome)
                print(
                    f"round {number}: {fault} at {outcome.at_fraction:.0%}, recovered in "
                    f"{outcome.recovery_seconds:.1f} s, exact: {outcome.exact} "
                    f"{outcome.problems}",
                    flush=True,
                )
    finally:
        service.stop()
        mailbox.stop()
    exact = sum(r.exact for r in rounds)
    print(f"{exact} of {len(rounds)} rounds exact")
    if not args.no_write:
        command = "python scripts/chaos.py " + " ".join(sys.argv[1:])
        record(rounds, command.strip(), args.rows, args.seed, faults)
    if exact != len(rounds):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
