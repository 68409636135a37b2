"""Where reports and kept uploads are stored: one small interface, one module per backend.

Paths are relative and ``/``-separated, as in ``reports/<batchId>/failures.csv``. A link
is a URL that anyone holding it may download from until it expires.

There are two backends, and :func:`importq.services.open_storage` chooses one.
:class:`importq.storage.local.LocalStorage` is a directory served by the API.
:class:`importq.storage.azure.AzureStorage` is Azure Blob, with SAS links.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

# What put_file stores: a file by path, or an open binary stream.
Source = Path | IO[bytes]


def open_source(source: Source) -> contextlib.AbstractContextManager[IO[bytes]]:
    """The source as a binary stream, at its start.

    A path is opened, and closed afterwards. A stream is rewound and left open for its
    owner.
    """
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
        """Store ``source`` at ``path``, replacing what was there. It is idempotent.

        ``source`` is a file, or an open binary stream read from its start. The file may
        be stored under a second name rather than copied, as local storage does on the
        same file system. So its owner may delete it afterwards, but must never write to
        it again. ``download_name`` is the name a download gets, where the store keeps
        one. It defaults to the path's last part.
        """

    async def read_into(self, path: str, target: IO[bytes]) -> None:
        """Write what is stored at ``path`` into ``target``; :class:`FileNotFoundError`
        when nothing is."""

    def link(self, path: str, *, download_name: str, expires_at: datetime) -> str:
        """A download URL for ``path`` valid until ``expires_at``."""

    async def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix``."""

    async def check(self) -> None:
        """Raise StorageError when the backend is unusable (for /health). It may create
        the container or folder the first upload would."""

    async def probe(self) -> str:
        """Raise StorageError when the backend is unusable, changing nothing (for
        ``importq doctor``); else say where files go, and whether that is still to be
        created by the first upload."""

    async def close(self) -> None:
        """Release connections; the storage is not used after this."""
