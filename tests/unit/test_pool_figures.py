"""A worker's pool figures, as its metrics server reads them in a thread of its own (no
database): psycopg_pool's counters are read on the event loop only, which publishes
them for that thread."""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import httpx

from importq.db import Pool
from importq.operations import metrics
from processes import free_port


class _WatchedPool:
    """Stands for a pool: its figures, and the threads that asked for them."""

    max_size = 8

    def __init__(self) -> None:
        self.available = 3
        self.asked_from: set[int] = set()

    def get_stats(self) -> dict[str, int]:
        self.asked_from.add(threading.get_ident())
        return {"pool_size": 5, "pool_available": self.available, "requests_waiting": 0}


async def test_the_metrics_thread_reads_what_the_loop_published() -> None:
    pool = _WatchedPool()
    snapshots = metrics.PoolSnapshots({"main": cast(Pool, pool)})
    publishing = asyncio.create_task(snapshots.publish(every=0.05))
    port = free_port()
    server = metrics.serve_metrics(
        "127.0.0.1", port, None, lambda: metrics.exposition(snapshots.figures)
    )
    url = f"http://127.0.0.1:{port}/metrics"
    available = 'importq_db_pool_connections{pool="main",state="available"}'
    try:
        scraped = await asyncio.to_thread(httpx.get, url)
        assert f"{available} 3.0" in scraped.text
        assert 'importq_db_pool_connections{pool="main",state="max"} 8.0' in scraped.text
        pool.available = 1
        await asyncio.sleep(0.2)
        scraped = await asyncio.to_thread(httpx.get, url)
        assert f"{available} 1.0" in scraped.text
    finally:
        publishing.cancel()
        server.shutdown()
        server.server_close()
    assert pool.asked_from == {threading.get_ident()}  # the loop's thread alone
