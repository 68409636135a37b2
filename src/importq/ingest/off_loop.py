"""Reading uploads off the event loop.

Parsing is CPU work in Python: decoding, splitting records, checking quotes, building
rows. Done on the event loop, one big or crafted upload would hold every other request
and every worker heartbeat of the process. So the readers' iterators are advanced in a
worker thread, a slice at a time, while the loop only hands the slices to PostgreSQL.

The thread still shares the GIL with the loop. Each time the loop waits for I/O it lets
the GIL go, and by default it gets it back only after the reading thread has run for
5 ms: a request made of dozens of such waits took a second. :func:`share_the_gil`
shortens that turn, for the service's processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


# Parsing has threads of its own: in asyncio's default pool it would wait behind
# blocking calls of other kinds, such as an email to a mail server that does not answer.
PARSING_THREADS = 8
_parsing = concurrent.futures.ThreadPoolExecutor(PARSING_THREADS, "importq-parse")


async def off_loop(work: Callable[..., R], *args: Any) -> R:
    """``work(*args)`` run in one of the parsing threads."""
    return await asyncio.get_running_loop().run_in_executor(_parsing, work, *args)


async def in_thread(items: Iterator[T], size: int) -> AsyncIterator[list[T]]:
    """The items of ``items``, ``size`` at a time, each slice taken in a parsing thread.

    Only one slice is taken at a time, so the iterator is never advanced by two threads
    at once. An exception raised by the iterator is raised here.
    """
    while batch := await off_loop(lambda: list(itertools.islice(items, size))):
        yield batch


# The longest a thread keeps the GIL while another waits for it (Python's default: 5 ms).
# Measured with a 1M-row CSV, a 100,000-row XLSX and a crafted CSV read at once:
# GET /health p95 0.31 → 0.10 s, the CSV's 202 after 17.1 → 7.4 s (docs/benchmarks.md).
SWITCH_INTERVAL_SECONDS = 0.0005


def share_the_gil() -> None:
    """Make threads hand the GIL over after ``SWITCH_INTERVAL_SECONDS``: for processes
    whose event loop serves others while uploads are parsed in threads."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
