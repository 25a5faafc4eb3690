"""The check's time budget: one global deadline, enforced by SIGALRM, and a share of the time left per phase."""
from __future__ import annotations

import signal
import time
from collections.abc import Callable


class BudgetExceeded(BaseException):
    """Raised in the main thread when the global deadline passes (``Budget.arm``). A ``BaseException``, as
    ``KeyboardInterrupt``: the phases' per-item ``except Exception`` must not swallow it."""


class Budget:
    """``total_s`` seconds from now for the phases named in ``shares`` (in running order), ``reserve_s`` of them kept
    for writing the outputs after the alarm."""

    def __init__(self, total_s: float, shares: dict[str, float], reserve_s: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + total_s
        self.shares, self.reserve_s = dict(shares), reserve_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def phase_clock(self, phase: str) -> Callable[[], float]:
        """Seconds left to ``phase``: its share of the time left now, over the shares of it and the phases after it
        (time a phase leaves unused goes to the later ones)."""
        names = list(self.shares)
        later = sum(self.shares[name] for name in names[names.index(phase):])
        deadline = time.monotonic() + max(0.0, self.remaining() - self.reserve_s) * self.shares[phase] / later
        return lambda: deadline - time.monotonic()

    def arm(self, reserve: bool = True) -> None:
        """Raises ``BudgetExceeded`` wherever the main thread is when only ``reserve_s`` are left (at the deadline
        itself with ``reserve=False``)."""

        def expire(signum, frame):
            raise BudgetExceeded(f"global deadline of {self.end - self.start:.0f} s reached")

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(0.001, self.remaining() - (self.reserve_s if reserve else 0.0)))

    @staticmethod
    def disarm() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
