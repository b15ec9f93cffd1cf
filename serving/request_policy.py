"""When the device asks the cloud for a fresh edit, from what it can compute itself.

Three policies (``serve.device.request_policy``):

- ``refresh``: every ``serve.device.refresh_every`` new events of a user, or when its prototype or the bank
  changed (the original rule; the request rate follows from the traffic);
- ``drift``: when the user state has drifted far from the state its cached cloud edit was asked with
  (a device with no edit of the current bank has drifted infinitely: it asks first). The threshold is
  the ``1 - request_rate`` quantile of the recent drifts, so about ``request_rate`` of the decisions ask;
- ``random``: each decision asks with probability ``request_rate`` (the baseline a policy must beat).

A decision is taken once per new event of a user (a ranking with nothing new reuses what it has).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque


class RequestPolicy:
    """``ask(signal)`` → whether this decision asks the cloud; ``signal`` is the drift (``inf``: no reference,
    above every finite drift)."""

    def __init__(self, kind: str, rate: float, window: int = 512, seed: int = 0):
        if kind not in ("drift", "random"):
            raise ValueError(f"request policy must be drift or random, got {kind!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"request_rate must be within [0, 1], got {rate}")
        self.kind, self.rate = kind, rate
        self._rng = random.Random(seed)
        self._recent: deque[float] = deque(maxlen=max(1, window))
        self._sorted: list[float] = []  # the finite ones, sorted (quantiles in O(log n))
        self._n_inf = 0
        self.asked = self.decisions = 0

    def ask(self, signal: float) -> bool:
        self.decisions += 1
        if self.kind == "random":
            yes = self._rng.random() < self.rate
        else:
            yes = self._above_quantile(signal)
        self.asked += yes
        return yes

    def _above_quantile(self, signal: float) -> bool:
        """Infinite drift (no edit to compare with) asks; finite drifts share what is left of the rate over the
        recent decisions, the largest first."""
        if self.rate <= 0.0:
            return False
        if self.rate >= 1.0:
            return True
        if len(self._recent) == self._recent.maxlen:
            old = self._recent.popleft()
            if math.isinf(old):
                self._n_inf -= 1
            else:
                del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._recent.append(signal)
        if math.isinf(signal):
            self._n_inf += 1
            return True
        bisect.insort(self._sorted, signal)
        finite = len(self._sorted)
        share = (self.rate * len(self._recent) - self._n_inf) / finite  # of the finite decisions
        if share <= 0.0:
            return False
        rank_from_top = finite - bisect.bisect_left(self._sorted, signal)  # itself included
        return rank_from_top <= max(1.0, share * finite)

    @property
    def share(self) -> float:
        """The share of decisions that asked so far."""
        return self.asked / self.decisions if self.decisions else 0.0
