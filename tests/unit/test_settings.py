"""Settings read from the environment: their defaults, bounds and refusals (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from azurite_account import ACCOUNT, ACCOUNT_KEY
from importq.config import Settings
from importq.services import open_storage
from importq.storage.azure import AzureStorage
from importq.storage.local import LocalStorage


def test_shared_buffers_auto_is_a_quarter_of_memory_within_bounds() -> None:
    auto = Settings(embedded_shared_buffers="auto").shared_buffers
    assert auto.endswith("MB") and 128 <= int(auto[:-2]) <= 2048
    assert Settings(embedded_shared_buffers="512MB").shared_buffers == "512MB"
    for refused in ("lots", "8MB", "512kB", "2000GB", "99999999999999999999GB"):
        with pytest.raises(ValueError):
            Settings(embedded_shared_buffers=refused)


def test_max_wal_size_is_four_gigabytes_unless_set_within_bounds() -> None:
    assert Settings().embedded_max_wal_size == "4GB"
    assert Settings(embedded_max_wal_size="64MB").embedded_max_wal_size == "64MB"
    for refused in ("auto", "16MB", "2000GB", "1TB"):
        with pytest.raises(ValueError):
            Settings(embedded_max_wal_size=refused)


async def test_the_connection_string_variable_selects_azure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    connection_string = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:1/{ACCOUNT};"
    )
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    assert isinstance(open_storage(Settings(data_dir=tmp_path)), LocalStorage)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    monkeypatch.setenv("IMPORTQ_AZURE_CONTAINER", "reports-box")
    settings = Settings(data_dir=tmp_path)
    assert settings.azure_storage_connection_string == connection_string
    storage = open_storage(settings)
    assert isinstance(storage, AzureStorage) and storage.container == "reports-box"
    url = storage.link(
        "reports/b/failures.csv",
        download_name="entrances-b-failures.csv",
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    assert url.startswith(f"http://127.0.0.1:1/{ACCOUNT}/reports-box/reports/b/failures.csv?")
    assert "se=2030-01-01T00%3A00%3A00Z" in url and "sp=r&" in url
    assert "rscd=attachment%3B%20filename%3D%22entrances-b-failures.csv%22" in url
    await storage.close()


def test_a_connection_string_without_an_account_key_is_refused() -> None:
    sas_only = (
        "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2024&sig=x"
    )
    with pytest.raises(ValueError, match="needs an account key"):
        AzureStorage(sas_only, container="importq")


def test_the_reconcile_cron_runs_every_fifteen_seconds_by_default() -> None:
    assert Settings().reconcile_cron == "* * * * * */15"
    for recovering in ("* * * * * */1", "* * * * * */30", "*/1 * * * * 0", "* * * * * 0,20"):
        assert Settings(reconcile_cron=recovering).reconcile_cron == recovering


def test_a_reconcile_cron_that_leaves_a_minute_without_a_run_is_refused() -> None:
    # The seconds-first form other tools use fires only in minutes :00 and :30 here.
    for stalling in ("*/30 * * * * *", "* 3 * * * */15", "0-58 * * * * */15"):
        with pytest.raises(ValueError, match="seconds LAST") as refused:
            Settings(reconcile_cron=stalling)
        assert "'* * * * * */15'" in str(refused.value)
    for malformed in ("*/5 * * * *", "every 15 seconds", "* * * * * 61"):
        with pytest.raises(ValueError, match="is not a six-field cron"):
            Settings(reconcile_cron=malformed)


def test_each_purpose_has_its_own_key_derived_with_hkdf(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from importq.config import purpose_key

    master = b"a secret key of the operator's"
    expected = HKDF(hashes.SHA256(), 32, None, b"importq report links").derive(master)
    assert purpose_key(master, "report links") == expected
    settings = Settings(secret_key=master.decode(), data_dir=tmp_path)
    keys = {settings.master_key, settings.signing_key, settings.webhook_key}
    assert len(keys) == 3
    assert Settings(secret_key="x", webhook_secret="own", data_dir=tmp_path).webhook_key == b"own"


def test_per_user_webhook_keys_are_each_users_own(tmp_path: Path) -> None:
    shared = Settings(secret_key="k", data_dir=tmp_path)
    assert shared.webhook_key_of(1) == shared.webhook_key_of(2) == shared.webhook_key
    own = Settings(secret_key="k", data_dir=tmp_path, webhook_keys="per-user")
    keys = {own.webhook_key_of(1), own.webhook_key_of(2), own.webhook_key, own.signing_key}
    assert len(keys) == 4
    # Derived from the webhook key: setting it, or the master key, rotates them all.
    rotated = Settings(
        secret_key="k", data_dir=tmp_path, webhook_keys="per-user", webhook_secret="n"
    )
    assert rotated.webhook_key_of(1) != own.webhook_key_of(1)


def test_the_webhook_key_cannot_make_a_report_link(tmp_path: Path) -> None:
    """A receiver verifies deliveries with the webhook key; with it, it still cannot
    sign a link to a report."""
    import hashlib
    import hmac
    import time

    settings = Settings(secret_key="the operator's", data_dir=tmp_path)
    storage = LocalStorage(tmp_path, public_url="http://x", signing_key=settings.signing_key)
    path, expires, name = "reports/b/successes.csv", int(time.time()) + 60, "s.csv"
    message = f"{path}\n{expires}\n{name}".encode()
    forged = hmac.new(settings.webhook_key, message, hashlib.sha256).hexdigest()
    assert not storage.verify(path, expires, name, forged)
    assert storage.verify(path, expires, name, storage.signature(path, expires, name))


def test_an_empty_metrics_token_is_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPORTQ_METRICS_TOKEN", "")
    assert Settings().metrics_token is None
    monkeypatch.setenv("IMPORTQ_METRICS_TOKEN", "  ")
    assert Settings().metrics_token is None
    monkeypatch.setenv("IMPORTQ_METRICS_TOKEN", " scrape-me ")
    assert Settings().metrics_token == "scrape-me"
