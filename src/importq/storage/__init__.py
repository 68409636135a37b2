"""Where reports (and later uploads) are kept: one small interface, one module per backend.

Paths are relative and ``/``-separated (``reports/<batchId>/failures.csv``). A link is a
URL anyone holding it may download from until it expires.

Backends: :class:`importq.storage.local.LocalStorage` (a directory served by the API) and
:class:`importq.storage.azure.AzureStorage` (Azure Blob, SAS links), chosen by
:func:`importq.services.open_storage`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol


class StorageError(RuntimeError):
    """Storage could not be reached or refused an operation; worth retrying later."""


class Storage(Protocol):
    async def put_file(self, path: str, source: Path, *, content_type: str) -> None:
        """Store ``source`` at ``path``, replacing what was there (idempotent)."""

    def link(self, path: str, *, download_name: str, expires_at: datetime) -> str:
        """A download URL for ``path`` valid until ``expires_at``."""

    async def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix``."""

    async def check(self) -> None:
        """Raise StorageError when the backend is unusable (for /health)."""

    async def close(self) -> None:
        """Release connections; the storage is not used after this."""
