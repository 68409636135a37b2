"""Where reports (and later uploads) are kept: one small interface, one module per backend.

Paths are relative and ``/``-separated (``reports/<batchId>/failures.csv``). A link is a
URL anyone holding it may download from until it expires.

Backends: :class:`importq.storage.local.LocalStorage` (a directory served by the API) and
:class:`importq.storage.azure.AzureStorage` (Azure Blob, SAS links), chosen by
:func:`importq.services.open_storage`.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

# What put_file stores: a file by path, or an open binary stream.
Source = Path | IO[bytes]


def open_source(source: Source) -> contextlib.AbstractContextManager[IO[bytes]]:
    """The source as a binary stream at its start; a path is opened (and closed after),
    a stream is rewound and left open for its owner."""
    if isinstance(source, Path):
        return source.open("rb")
    source.seek(0)
    return contextlib.nullcontext(source)


class StorageError(RuntimeError):
    """Storage could not be reached or refused an operation; worth retrying later."""


class Storage(Protocol):
    async def put_file(
        self, path: str, source: Source, *, content_type: str, download_name: str | None = None
    ) -> None:
        """Store ``source`` (a file, or an open binary stream read from its start) at
        ``path``, replacing what was there (idempotent). ``download_name``: the name a
        download gets (default: the path's last part), where the store keeps one. A file
        may be stored by a second name rather than copied (local storage on the same file
        system): its owner may delete it after, never write to it again."""

    def link(self, path: str, *, download_name: str, expires_at: datetime) -> str:
        """A download URL for ``path`` valid until ``expires_at``."""

    async def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix``."""

    async def check(self) -> None:
        """Raise StorageError when the backend is unusable (for /health)."""

    async def close(self) -> None:
        """Release connections; the storage is not used after this."""
