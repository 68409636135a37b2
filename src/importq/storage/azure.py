"""Azure Blob storage: reports uploaded as streamed blocks, read-only SAS download links.

It is selected when ``AZURE_STORAGE_CONNECTION_STRING`` is set. The connection string
must hold an account key (``AccountName=…;AccountKey=…``), which signs the SAS links
without a network call. Blobs go to the container ``IMPORTQ_AZURE_CONTAINER``, which is
created on first use when missing.

Uploads read the file in blocks of :data:`BLOCK_SIZE`, with at most
:data:`UPLOAD_CONCURRENCY` in flight, so a report of any size never sits in memory.

The SDK retries a failed request a few times, with a short backoff. An error that
outlasts those retries is raised as :class:`~importq.storage.StorageError`. The
aggregation job then retries with its own, longer backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import IO
from urllib.parse import quote

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, ContentSettings, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

from importq.storage import Source, StorageError, open_source

# What a failed call may raise. The SDK raises its own errors, wrapping the transport's.
# Reading the source file raises OSError, and so do TimeoutError and ConnectionError.
ERRORS = (AzureError, OSError)

BLOCK_SIZE = 4 << 20
SINGLE_PUT_SIZE = 8 << 20
UPLOAD_CONCURRENCY = 4
# A request gets two more tries, about 3 s and 5 s later. The aggregation job's backoff
# rides out longer outages.
RETRIES = 2
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
# /health answers quickly, with one try and short timeouts.
CHECK_TIMEOUT = 5


def content_disposition(download_name: str) -> str:
    """An RFC 6266 ``attachment`` header naming the file: an ASCII fallback, and the UTF-8
    name when it differs."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in download_name
    )
    header = f'attachment; filename="{fallback}"'
    if fallback != download_name:
        header += f"; filename*=UTF-8''{quote(download_name, safe='')}"
    return header


class AzureStorage:
    def __init__(self, connection_string: str, *, container: str) -> None:
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string,
                retry_policy=ExponentialRetry(
                    initial_backoff=1, increment_base=2, retry_total=RETRIES, random_jitter_range=1
                ),
                connection_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                max_block_size=BLOCK_SIZE,
                max_single_put_size=SINGLE_PUT_SIZE,
            )
        except ValueError as error:
            raise ValueError(f"AZURE_STORAGE_CONNECTION_STRING is not valid: {error}") from None
        # The SDK parsed the account key into its shared-key credential, also for
        # UseDevelopmentStorage=true. A connection string with a SAS token, or with no
        # credential, has no key.
        credential = self._service.credential
        account_key = getattr(credential, "account_key", None)
        account_name = getattr(credential, "account_name", None)
        if not isinstance(account_key, str) or not account_key or not account_name:
            raise ValueError(
                "AZURE_STORAGE_CONNECTION_STRING needs an account key (AccountName=…;"
                "AccountKey=…): report links are SAS tokens signed with it"
            )
        self._account_name = str(account_name)
        self._account_key = account_key
        self._container_name = container
        self._container = self._service.get_container_client(container)
        self._container_ready = False
        self._container_lock = asyncio.Lock()

    @property
    def container(self) -> str:
        return self._container_name

    async def _ensure_container(self, *, quick: bool = False) -> None:
        """Create the container once per process. Another process creating it too is fine.

        With ``quick``, make one try with short timeouts, as /health needs.
        """
        if self._container_ready:
            return
        async with self._container_lock:
            if self._container_ready:
                return
            try:
                if quick:
                    await self._container.create_container(
                        retry_total=0,
                        connection_timeout=CHECK_TIMEOUT,
                        read_timeout=CHECK_TIMEOUT,
                    )
                else:
                    await self._container.create_container()
            except ResourceExistsError:
                pass
            self._container_ready = True

    async def put_file(
        self, path: str, source: Source, *, content_type: str, download_name: str | None = None
    ) -> None:
        settings = ContentSettings(
            content_type=content_type,
            content_disposition=content_disposition(download_name or path.rsplit("/", 1)[-1]),
        )
        try:
            try:
                await self._ensure_container()
                await self._upload(path, source, settings)
            except ResourceNotFoundError:
                # The container went away since this process created it: make it again.
                self._container_ready = False
                await self._ensure_container()
                await self._upload(path, source, settings)
        except ERRORS as error:
            raise StorageError(f"cannot upload {path} to Azure Blob storage: {error}") from error

    async def _upload(self, path: str, source: Source, settings: ContentSettings) -> None:
        """Stream ``source`` in blocks.

        The SDK commits the block list at the end, so a failed upload never replaces what
        was there.
        """
        with open_source(source) as stream:
            await self._container.upload_blob(
                path,
                stream,
                overwrite=True,
                max_concurrency=UPLOAD_CONCURRENCY,
                content_settings=settings,
            )

    async def read_into(self, path: str, target: IO[bytes]) -> None:
        try:
            downloader = await self._container.download_blob(path)
            await downloader.readinto(target)
        except ResourceNotFoundError:
            raise FileNotFoundError(path) from None
        except ERRORS as error:
            raise StorageError(f"cannot read {path} from Azure Blob storage: {error}") from error

    def link(self, path: str, *, download_name: str, expires_at: datetime) -> str:
        """A read-only SAS URL whose download is named ``download_name``. No network call."""
        token = generate_blob_sas(
            account_name=self._account_name,
            container_name=self._container_name,
            blob_name=path,
            account_key=self._account_key,
            permission=BlobSasPermissions(read=True),
            expiry=expires_at,
            content_disposition=content_disposition(download_name),
        )
        return f"{self._container.url}/{quote(path, safe='/~')}?{token}"

    async def delete_prefix(self, prefix: str) -> None:
        folder = prefix.strip("/") + "/"
        try:
            async for name in self._container.list_blob_names(name_starts_with=folder):
                with contextlib.suppress(ResourceNotFoundError):
                    await self._container.delete_blob(name)
        except ResourceNotFoundError:
            return  # no container: nothing under the prefix
        except ERRORS as error:
            raise StorageError(
                f"cannot delete {folder} from Azure Blob storage: {error}"
            ) from error

    async def check(self) -> None:
        try:
            await self._ensure_container(quick=True)
            try:
                await self._container.get_container_properties(
                    retry_total=0, connection_timeout=CHECK_TIMEOUT, read_timeout=CHECK_TIMEOUT
                )
            except ResourceNotFoundError:
                self._container_ready = False  # gone: the next upload creates it again
                await self._ensure_container(quick=True)
        except ERRORS as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise StorageError(
                f"Azure Blob container {self._container_name!r}: {message}"
            ) from error

    async def probe(self) -> str:
        container = f"container {self._container_name!r}"
        try:
            await self._container.get_container_properties(
                retry_total=0, connection_timeout=CHECK_TIMEOUT, read_timeout=CHECK_TIMEOUT
            )
        except ResourceNotFoundError:
            # Azure checks the key before it looks for the container: the key is good.
            return f"{container} not created yet: the first upload creates it"
        except ERRORS as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise StorageError(f"Azure Blob {container}: {message}") from error
        return container

    async def close(self) -> None:
        await self._service.close()
