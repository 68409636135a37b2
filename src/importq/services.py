"""Everything a process needs, built once: settings, pool, datasets, storage, queue.

The API, the worker and the tests all start from :func:`open_services`, so each part is
wired one way only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from importq.config import Settings
from importq.datasets import Dataset, load_datasets
from importq.db import Pool, create_pool, database_url
from importq.queue import JobQueue, create_queue_app
from importq.storage.local import LocalStorage


@dataclass
class Services:
    settings: Settings
    pool: Pool
    datasets: dict[str, Dataset]
    storage: LocalStorage
    queue: JobQueue


@contextlib.asynccontextmanager
async def open_services(settings: Settings, *, pool_size: int = 10) -> AsyncIterator[Services]:
    """Open the pool and the queue app on it; close both on exit."""
    datasets = load_datasets(settings.datasets_file)
    pool = create_pool(database_url(settings), max_size=pool_size)
    await pool.open(wait=True, timeout=60)
    app = create_queue_app()
    try:
        async with app.open_async(pool=pool):
            yield Services(
                settings=settings,
                pool=pool,
                datasets=datasets,
                storage=LocalStorage(
                    settings.files_dir,
                    public_url=settings.public_url,
                    signing_key=settings.signing_key,
                ),
                queue=JobQueue(app),
            )
    finally:
        await pool.close()
