"""Local directory storage, served by the API through HMAC-signed, expiring links.

A file is written under a temporary name and then renamed, so a reader never sees half
of it.

A link is ``{public_url}/files/{path}?expires=<unix>&name=<download name>&signature=<hex>``.
The signature is HMAC-SHA256 over ``path``, ``expires`` and ``name``. A link needs no
token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import os
import shutil
import time
import uuid
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote, urlencode

from importq.storage import Source, StorageError, open_source


def _linked(source: Source, partial: Path) -> bool:
    """Whether ``source`` could be given the second name ``partial`` instead of being copied.

    Naming a file writes none of its bytes again, which matters for a report of millions
    of rows or an upload. A path can be named. So can an open file on disk, through its
    descriptor. That also names a file that has no name yet, such as an upload's
    ``O_TMPFILE`` spool. Naming fails across file systems, on a file system without hard
    links, and on a system without ``/proc``.
    """
    if isinstance(source, Path):
        target = str(source)
    elif isinstance(source, io.BufferedReader | io.BufferedRandom | io.FileIO):
        # Only a plain file, whose bytes are the stream's. A wrapper such as GzipFile has
        # a file's descriptor but streams other bytes. A SpooledTemporaryFile, as a
        # multipart upload is, is left out too. Its file has O_EXCL, and asking for its
        # descriptor would first write out a file still held in memory.
        try:
            source.flush()  # what the stream still buffers is in the file
            target = f"/proc/self/fd/{source.fileno()}"
        except OSError:  # io.UnsupportedOperation: over no file (a BytesIO…)
            return False
    else:
        return False
    try:
        directory = os.open(partial.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        # Given a directory descriptor, os.link calls linkat() with AT_SYMLINK_FOLLOW.
        # That follows the descriptor's /proc link to its file, which link() would not.
        os.link(target, partial.name, dst_dir_fd=directory, follow_symlinks=True)
    except (OSError, NotImplementedError):
        return False
    finally:
        os.close(directory)
    return True


def folder_exists(folder: Path) -> bool:
    """Whether ``folder`` exists, when it is a folder this process may write in or may
    create (its nearest existing parent is); raises :class:`StorageError` saying why it is
    neither. Nothing is created."""
    existing = folder
    try:
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(f"{existing} is not a folder")
    except OSError as error:
        raise StorageError(str(error)) from error
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"{existing} is not writable")
    return existing == folder


class LocalStorage:
    def __init__(self, root: Path, *, public_url: str, signing_key: bytes) -> None:
        self.root = root
        self._public_url = public_url.rstrip("/")
        self._key = signing_key

    def resolve(self, path: str) -> Path:
        """The file for ``path``; refuses paths that would leave the root."""
        relative = PurePosixPath(path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise StorageError(f"invalid storage path {path!r}")
        return self.root.joinpath(*relative.parts)

    async def put_file(
        self, path: str, source: Source, *, content_type: str, download_name: str | None = None
    ) -> None:
        # Files keep no name of their own here: each link names its download.
        target = self.resolve(path)

        def store() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
            if not _linked(source, partial):
                with open_source(source) as stream, partial.open("wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
            partial.replace(target)

        try:
            await asyncio.to_thread(store)
        except OSError as error:
            raise StorageError(f"cannot write {path}: {error}") from error

    async def read_into(self, path: str, target: IO[bytes]) -> None:
        source = self.resolve(path)

        def copy() -> None:
            with source.open("rb") as stream:
                shutil.copyfileobj(stream, target, 1 << 20)

        try:
            await asyncio.to_thread(copy)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise StorageError(f"cannot read {path}: {error}") from error

    def signature(self, path: str, expires: int, name: str) -> str:
        message = f"{path}\n{expires}\n{name}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def link(self, path: str, *, download_name: str, expires_at: datetime) -> str:
        expires = int(expires_at.timestamp())
        query = urlencode(
            {
                "expires": expires,
                "name": download_name,
                "signature": self.signature(path, expires, download_name),
            }
        )
        return f"{self._public_url}/files/{quote(path)}?{query}"

    def verify(self, path: str, expires: int, name: str, signature: str) -> bool:
        """Whether a link's signature is genuine and it has not expired."""
        expected = self.signature(path, expires, name)
        # As bytes: compare_digest refuses str with non-ASCII characters, which a
        # tampered link may carry.
        genuine = hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
        return genuine and expires >= time.time()

    async def delete_prefix(self, prefix: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.resolve(prefix), True)

    async def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(str(error)) from error
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")

    async def probe(self) -> str:
        if folder_exists(self.root):
            return f"folder {self.root}"
        return f"folder {self.root} not created yet: the first file creates it"

    async def close(self) -> None:
        """Nothing to release: files are opened per operation."""
