"""A token bucket per user (docs/security.md): one user's request rate cannot take the worker from the others.

Each user token gets ``rate_per_s`` requests per second with bursts of ``burst``, a request costing one token plus
one per :data:`BYTES_PER_TOKEN` of its declared body (a 1,000-event batch or a 10,000-item history costs what its
parsing costs, not what a plain ranking does); past that the device answers 429 with ``Retry-After`` and closes the
connection, before the body is read (so a refused request costs almost nothing, its body is never parsed). The
operator key is not limited (a trusted backend ingesting for many users). Buckets are per worker process and kept
for the ``max_users`` most recent users (an evicted user comes back with a full bucket, as after a pause).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

BYTES_PER_TOKEN = 16_384


def request_cost(content_length: str | None) -> float:
    """Tokens a request costs: 1, plus its declared body size in :data:`BYTES_PER_TOKEN` units."""
    size = int(content_length) if content_length and content_length.isdigit() else 0
    return 1.0 + size / BYTES_PER_TOKEN


class UserRateLimit:
    def __init__(self, rate_per_s: float, burst: int, max_users: int = 100_000):
        self.rate, self.burst, self.max_users = rate_per_s, burst, max_users
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> (tokens, at)

    def wait_s(self, user: str, cost: float = 1.0, now: float | None = None) -> float:
        """0 if ``user`` may make a request of ``cost`` tokens now (and spend them), else how long until it may.
        A request costing more than the burst is admitted with a full bucket (and empties it)."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(user, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        need = min(cost, float(self.burst))
        admitted = tokens >= need
        self._buckets[user] = (tokens - need if admitted else tokens, now)
        if len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        return 0.0 if admitted else (need - tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> str:
        return str(max(1, math.ceil(wait_s)))
