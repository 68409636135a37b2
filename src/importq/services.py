"""Everything a process needs, built once: settings, pool, dataset catalog, storage, queue.

The API, the worker and the tests all start from :func:`open_services`, so each part is
wired one way only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from importq.config import Settings
from importq.db import DatabaseOutage, Pool, create_pool, database_url
from importq.pipeline.dataset_versions import DatasetCatalog
from importq.pipeline.job_queue import JobQueue, create_queue_app
from importq.storage import Storage
from importq.storage.local import LocalStorage

# The API's authentication has a pool of its own, so that a request is never
# authenticated behind staging or jobs waiting for a connection.
AUTH_POOL_SIZE = 4


@dataclass
class Services:
    settings: Settings
    pool: Pool
    auth_pool: Pool
    #: The published dataset definitions (``importq migrate`` publishes the files').
    datasets: DatasetCatalog
    storage: Storage
    queue: JobQueue
    outage: DatabaseOutage


def open_storage(settings: Settings) -> Storage:
    """Azure Blob when ``AZURE_STORAGE_CONNECTION_STRING`` is set, else the local directory."""
    if settings.azure_storage_connection_string:
        from importq.storage.azure import AzureStorage

        return AzureStorage(
            settings.azure_storage_connection_string, container=settings.azure_container
        )
    return LocalStorage(
        settings.files_dir, public_url=settings.base_url, signing_key=settings.signing_key
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, pool_size: int = 10, auth_pool_size: int = AUTH_POOL_SIZE
) -> AsyncIterator[Services]:
    """Open the pools, the storage and the queue app on the main pool; close them all on
    exit. ``pool_size`` bounds the main pool; with ``auth_pool_size`` 0 (a process that
    serves no API), authentication would use the main pool."""
    storage = open_storage(settings)
    try:
        url = database_url(settings)
        outage = DatabaseOutage(url)
        pool = create_pool(url, max_size=pool_size, outage=outage)
        auth_pool = (
            create_pool(url, max_size=auth_pool_size, outage=outage) if auth_pool_size else pool
        )
        await pool.open(wait=True, timeout=60)
        if auth_pool is not pool:
            await auth_pool.open(wait=True, timeout=60)
        try:
            app = create_queue_app()
            try:
                async with app.open_async(pool=pool):
                    yield Services(
                        settings=settings,
                        pool=pool,
                        auth_pool=auth_pool,
                        datasets=DatasetCatalog(),
                        storage=storage,
                        queue=JobQueue(app),
                        outage=outage,
                    )
            finally:
                await outage.close()
        finally:
            if auth_pool is not pool:
                await auth_pool.close()
            await pool.close()
    finally:
        await storage.close()
