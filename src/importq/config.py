"""Service configuration: one pydantic-settings class, environment prefix ``IMPORTQ_``.

Every setting is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from importq.ingest.chunk_bounds import ChunkSizing
from importq.ingest.limits import UploadLimits
from importq.worker.schedule import DEFAULT_RECONCILE_CRON, check_reconcile_cron

SECRET_KEY_FILE = "secret-key"
PUBLIC_URL_FILE = "public-url"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


def _memory() -> int:
    """Bytes of memory this process may use.

    That is the machine's memory, or its container's limit when lower (cgroup v2, else v1).
    """
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            memory = min(memory, int(Path(limit_file).read_text().strip()))  # "max": no limit
    return memory


def _memory_size(value: str, name: str, *, smallest: int) -> str:
    """Return ``value``, a size in ``<n>MB`` or ``<n>GB`` as the field's pattern has it.

    Raises ValueError when it is below ``smallest`` bytes or above 1024GB.
    """
    size = int(value[:-2]) << (20 if value.endswith("MB") else 30)
    if not smallest <= size <= 1 << 40:
        raise ValueError(f"{name} must be between {smallest >> 20}MB and 1024GB")
    return value


def purpose_key(master: bytes, purpose: str) -> bytes:
    """A 32-byte key for one ``purpose``, derived from ``master`` with HKDF-SHA256
    (RFC 5869, no salt, the purpose as its info). Keys of two purposes tell nothing of
    each other, or of the master key."""
    extracted = hmac.new(b"\0" * 32, master, hashlib.sha256).digest()
    info = f"importq {purpose}".encode()
    return hmac.new(extracted, info + b"\x01", hashlib.sha256).digest()


class Settings(BaseSettings):
    """All of importq's settings. Field names map to ``IMPORTQ_<NAME>`` variables."""

    model_config = SettingsConfigDict(env_prefix="IMPORTQ_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset runs an embedded server in data_dir/pg"
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("importq")),
        description="Embedded database, local files, outbox, admin token",
    )
    embedded_shared_buffers: str = Field(
        default="auto",
        pattern=r"^(auto|[0-9]+(MB|GB))$",
        description="The embedded server's shared_buffers (16MB to 1024GB); auto: a quarter "
        "of the memory, 128MB to 2GB",
    )
    embedded_max_wal_size: str = Field(
        default="4GB",
        pattern=r"^[0-9]+(MB|GB)$",
        description="The embedded server's max_wal_size (32MB to 1024GB): WAL written "
        "between checkpoints",
    )
    public_url: str | None = Field(
        default=None,
        description="Base of absolute links; unset: the address serve listens on, else "
        + DEFAULT_PUBLIC_URL,
    )
    secret_key: str | None = Field(default=None, description="Signs local report links")
    datasets_file: Path | None = Field(default=None, description="TOML file of extra datasets")

    chunk_size: int = Field(default=50, ge=1, description="Target rows per chunk")
    # Each chunk has a cost of its own, whatever its size: its job, planning its
    # statements, its temporary tables, its commit. So fewer, larger chunks finish a big
    # import sooner. 100 chunks still keep four workers busy to the end. The measurements
    # are in docs/benchmarks.md.
    max_chunks: int = Field(default=100, ge=1, description="Most chunks per batch")
    chunk_max_attempts: int = Field(
        default=3, ge=1, le=50, description="Attempts before a chunk fails"
    )
    worker_concurrency: int = Field(default=4, ge=1, description="Chunk jobs a worker runs at once")
    completion_concurrency: int = Field(
        default=2, ge=1, description="Completion checks and aggregations a worker runs at once"
    )
    message_concurrency: int = Field(
        default=4, ge=1, description="Emails a worker sends at once, and webhooks"
    )
    # A chunk holds a worker slot while it runs: ~20 ms of a core a 1,000 rows. The cap
    # keeps the wait of a small batch posted behind a 10M-row one short, for ~8 ms a
    # chunk more (docs/benchmarks.md).
    max_chunk_rows: int = Field(
        default=20_000, ge=1, description="Most rows a chunk aims for; wins over max_chunks"
    )
    max_pending_rows_per_user: int = Field(
        default=0, ge=0, description="Unprocessed rows a user may have queued (0: no limit)"
    )
    # procrastinate's worker misses a job announced while it fetches, and then waits for
    # its next poll: a 10-row batch behind a big one waited a second between its
    # completion check and its aggregation (docs/benchmarks.md).
    worker_poll_seconds: float = Field(
        default=0.2, gt=0, description="How often an idle worker looks for jobs unannounced"
    )
    max_upload_bytes: int = Field(default=8 << 30, ge=1, description="Largest accepted body")
    max_rows: int = Field(default=20_000_000, ge=1, description="Most data rows in an upload")
    max_columns: int = Field(default=500, ge=1, description="Most columns in an upload")
    max_cell_chars: int = Field(default=32_767, ge=1, description="Longest cell, characters")

    @property
    def shared_buffers(self) -> str:
        """The embedded server's shared_buffers, as PostgreSQL reads a memory size."""
        if self.embedded_shared_buffers != "auto":
            return self.embedded_shared_buffers
        return f"{min(max(_memory() // 4, 128 << 20), 2 << 30) >> 20}MB"

    @field_validator("embedded_shared_buffers")
    @classmethod
    def _enough_buffers(cls, value: str) -> str:
        if value == "auto":
            return value
        return _memory_size(value, "shared_buffers", smallest=16 << 20)

    @field_validator("embedded_max_wal_size")
    @classmethod
    def _enough_wal(cls, value: str) -> str:
        return _memory_size(value, "max_wal_size", smallest=32 << 20)

    @property
    def chunk_sizing(self) -> ChunkSizing:
        return ChunkSizing(self.chunk_size, self.max_chunks, self.max_chunk_rows)

    @property
    def upload_limits(self) -> UploadLimits:
        return UploadLimits(self.max_rows, self.max_columns, self.max_cell_chars)

    report_url_ttl: int = Field(default=7 * 24 * 3600, ge=60, description="Report link lifetime, s")
    retention_days: int = Field(default=30, ge=1, description="Keep staged rows and jobs this long")

    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or json: one JSON object a line"
    )
    metrics_token: str | None = Field(
        default=None,
        description="Bearer token /metrics asks for; unset or empty: /metrics is open",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port importq worker serves its /metrics on; unset: none",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address importq worker serves its /metrics on"
    )
    smtp_url: str | None = Field(default=None, description="SMTP server; unset writes .eml files")
    mail_from: str = Field(default="importq <importq@localhost>", description="From address")

    webhook_secret: str | None = Field(
        default=None, description="Signs webhooks; unset uses the secret key"
    )
    webhook_keys: Literal["shared", "per-user"] = Field(
        default="shared",
        description="One webhook key for all receivers, or a key of its own for each user",
    )
    cors_origins: str = Field(
        default="", description="Comma-separated origins whose pages may call the API"
    )
    rate_limit: int = Field(
        default=120, ge=0, description="Uploads a user may send a minute (0: no limit)"
    )
    events_keep_alive: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between keep-alive comments of a quiet job event stream",
    )
    webhook_allow_hosts: str = Field(
        default="", description="Comma-separated hosts webhooks may reach though private"
    )
    webhook_timeout: float = Field(
        default=15.0, gt=0, description="Deadline of a whole webhook POST, answer included, s"
    )
    webhook_max_attempts: int = Field(default=8, ge=1, description="Webhook tries, backoff")

    heartbeat_seconds: float = Field(default=10.0, gt=0, description="Worker heartbeat period")
    stalled_seconds: float = Field(default=30.0, gt=0, description="Heartbeat age of a dead worker")
    reconcile_cron: str = Field(
        default=DEFAULT_RECONCILE_CRON,
        description="When reconcile runs: a cron with seconds last, at least once a minute",
    )
    shutdown_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long running jobs may take to finish"
    )

    @field_validator("metrics_token")
    @classmethod
    def _no_empty_token(cls, value: str | None) -> str | None:
        """An empty token (``IMPORTQ_METRICS_TOKEN=``) is none, rather than one that
        ``Bearer`` followed by nothing would present. Spaces around it are not part of
        it, as they are not of the one presented."""
        if value is None or not value.strip():
            return None
        return value.strip()

    @field_validator("reconcile_cron")
    @classmethod
    def _recovering_cron(cls, value: str) -> str:
        return check_reconcile_cron(value)

    azure_storage_connection_string: str | None = Field(
        default=None,
        # The SDK's standard variable, without the IMPORTQ_ prefix. The prefixed name and
        # the field name work too, so Settings(azure_storage_connection_string=…) does.
        validation_alias=AliasChoices(
            "AZURE_STORAGE_CONNECTION_STRING",
            "IMPORTQ_AZURE_STORAGE_CONNECTION_STRING",
            "azure_storage_connection_string",
        ),
        description="Azure Blob connection string with an account key; unset stores locally",
    )
    azure_container: str = Field(
        default="importq",
        pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
        description="Azure Blob container of the reports, created when missing",
    )

    @property
    def webhook_key(self) -> bytes:
        """The key of webhook signatures: ``IMPORTQ_WEBHOOK_SECRET``, else one derived
        from the secret key, in hex. Never the key of report links, so a receiver that holds it
        cannot make a link to anyone's report."""
        if self.webhook_secret:
            return self.webhook_secret.encode()
        # As text, so that a receiver takes it as it is given (``importq webhook-secret``).
        return purpose_key(self.master_key, "webhook signatures").hex().encode()

    def webhook_key_of(self, user_id: int) -> bytes:
        """The key that signs the webhooks of ``user_id``'s batches.

        With ``IMPORTQ_WEBHOOK_KEYS=per-user``, each user's own, derived from
        :attr:`webhook_key` with the user's id as its label: a receiver that holds one
        user's key cannot sign a delivery another user's receiver would take. Otherwise
        :attr:`webhook_key` itself.
        """
        if self.webhook_keys == "shared":
            return self.webhook_key
        return purpose_key(self.webhook_key, f"webhook signatures of user {user_id}").hex().encode()

    @property
    def cors_allowed(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def webhook_allowed(self) -> frozenset[str]:
        return frozenset(
            h.strip().lower() for h in self.webhook_allow_hosts.split(",") if h.strip()
        )

    @cached_property
    def base_url(self) -> str:
        """The base of every absolute link (reports, emails, ``importq import``).

        ``IMPORTQ_PUBLIC_URL`` when set. Else the address ``importq serve`` listens on,
        which it records in the data dir as it starts, so that its worker, ``importq
        worker`` and ``importq import`` on the same machine link to it too. Else the
        default address.
        """
        if self.public_url:
            return self.public_url.rstrip("/")
        with contextlib.suppress(FileNotFoundError):
            return (self.data_dir / PUBLIC_URL_FILE).read_text().strip()
        return DEFAULT_PUBLIC_URL

    def record_serving_address(self, host: str, port: int) -> None:
        """Record where ``importq serve`` listens, as the base of links when
        ``IMPORTQ_PUBLIC_URL`` is unset (see :attr:`base_url`)."""
        if self.public_url:
            return
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / PUBLIC_URL_FILE).write_text(f"http://{shown}:{port}\n")
        self.__dict__.pop("base_url", None)

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def spool_dir(self) -> Path:
        """Where upload bodies are spooled. It is beside files_dir, so local storage can
        keep an upload by naming its spool file rather than copying it."""
        return self.data_dir / "spool"

    @property
    def signing_key(self) -> bytes:
        """The key that signs local report links, derived from the secret key."""
        return purpose_key(self.master_key, "report links")

    @cached_property
    def master_key(self) -> bytes:
        """``IMPORTQ_SECRET_KEY``, else one kept in the data dir. Nothing is signed with
        it: each purpose has a key derived from it (:func:`purpose_key`).

        A generated key is written once and reused, so links survive a restart.
        """
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / SECRET_KEY_FILE
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{SECRET_KEY_FILE}.{secrets.token_hex(8)}")
            # 0600 from its creation, and never through a link.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(tmp, flags, 0o600), "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            # link() fails when the file exists. So of two processes starting at once,
            # exactly one key wins, and both read it back.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        return path.read_text().strip().encode()

    smtp_ca_file: Path | None = Field(
        default=None, description="PEM CA certificates trusted for SMTP TLS instead of the system's"
    )
    smtp_timeout: float = Field(default=30.0, gt=0, description="SMTP socket timeout, seconds")
    mail_max_attempts: int = Field(
        default=16, ge=1, description="Attempts to send an email before giving up (about 1.3 h)"
    )
