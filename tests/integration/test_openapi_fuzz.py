"""The OpenAPI document tells the truth: schemathesis, with all its checks, against a live
``importq serve``, as a plain user or an admin, finds nothing.

Every status an operation answers is documented, with the body it has; valid requests
are taken and invalid ones refused; a method a path does not have gets 405 with
``Allow``; a request without the token gets 401. ``tests/schemathesis_hooks.py`` and
``tests/schemathesis.toml`` say what the run is told and why. The seed is fixed so that
a run can be repeated; ``IMPORTQ_FUZZ_SEED`` picks another.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from processes import serving

TESTS = Path(__file__).resolve().parents[1]
SEED = os.environ.get("IMPORTQ_FUZZ_SEED", "20261204")


# Each run takes one to two minutes on one worker of a 2-core machine.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("role", ["user", "admin"])
def test_schemathesis_finds_no_failure(database_url: str, tmp_path: Path, role: str) -> None:
    """As a plain user (most routes' success, admin routes' 403) and as an admin (the
    users and tokens routes' success)."""
    env = {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        # Its own tests cover the limiter; here it would answer most uploads with 429.
        "IMPORTQ_RATE_LIMIT": "0",
    }
    created = subprocess.run(
        [sys.executable, "-m", "importq.cli", "users", "create", "fuzzer", "--role", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = created.stdout.strip()
    with serving(env, tmp_path / "serve.log") as (url, _):
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(TESTS / "schemathesis.toml"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "60",
                "--seed",
                SEED,
                "--no-color",
            ],
            env={
                **os.environ,
                "IMPORTQ_FUZZ_TOKEN": token,
                "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
                "PYTHONPATH": str(TESTS),
            },
            cwd=tmp_path,  # where it keeps its cache
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    # The fuzzer reached the pipeline itself, not only the refusals in front of it.
    with psycopg.connect(database_url) as conn:
        accepted = conn.execute(
            "SELECT count(*) FROM batches JOIN users ON users.id = initiator_id"
            " WHERE users.name = 'fuzzer'"
        ).fetchone()
    assert accepted is not None and accepted[0] >= 10
