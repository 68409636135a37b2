"""How many uploads a user may send a minute (``IMPORTQ_RATE_LIMIT``), whichever of
their tokens or web sessions they come with.

The count is kept per process, over a sliding minute: a service of several processes
allows each the limit. An upload past it is refused at once with ``429 rate_limited``
and a ``Retry-After`` of the seconds until the oldest upload of the minute leaves it.
"""

from __future__ import annotations

import math
import time
from collections import deque

from importq.errors import Refusal

WINDOW_SECONDS = 60.0


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self._limit = per_minute
        self._sent: dict[str, deque[float]] = {}

    def take(self, key: str) -> None:
        """Count an upload of ``key``, or refuse it when the minute is full. A limit of
        0 counts nothing."""
        if self._limit == 0:
            return
        now = time.monotonic()
        sent = self._sent.setdefault(key, deque())
        while sent and sent[0] <= now - WINDOW_SECONDS:
            sent.popleft()
        if len(sent) >= self._limit:
            wait = math.ceil(sent[0] + WINDOW_SECONDS - now)
            raise Refusal(
                429,
                "rate_limited",
                f"This token sent {self._limit} uploads in the last minute, the limit; "
                f"send again in {wait} s.",
                limit=self._limit,
                retryAfter=max(wait, 1),
            )
        sent.append(now)
        if len(self._sent) > 10_000:  # forget the tokens that sent nothing this minute
            self._sent = {k: v for k, v in self._sent.items() if v and v[-1] > now - WINDOW_SECONDS}
