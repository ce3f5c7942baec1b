"""Limits: the broker's largest packet, and per device a token bucket of the bytes the server sends it.

A device asks for blob chunks; each answer costs the server (and the broker)
its bytes. Asking again and again for a whole model would turn one device's
cheap requests into a flood, so each device gets a budget per round: enough
to fetch everything its task names ``bursts`` times at once, refilled at that
rate per ``refill_s`` seconds, reset when a new round gives it a new task.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_PACKET_SIZE", "ByteBudget"]

# What the generated broker accepts in one packet: an fp32 update of the registered models (cnn-small:
# 1.2 MB) and a default chunk (256 KiB) with room to spare. `serve` checks its model and chunk size fit.
DEFAULT_MAX_PACKET_SIZE = 4 * 1024 * 1024


@dataclass
class ByteBudget:
    capacity: float  # bytes
    refill_per_s: float  # bytes per second
    tokens: float
    updated: float  # clock reading of the last refill

    @classmethod
    def for_task(cls, task_bytes: int, now: float, *, bursts: int = 4, refill_s: float = 60.0) -> ByteBudget:
        capacity = float(bursts * max(task_bytes, 1))
        return cls(capacity=capacity, refill_per_s=capacity / refill_s, tokens=capacity, updated=now)

    def take(self, cost: int, now: float) -> bool:
        """Spend ``cost`` bytes if the budget holds them; False (and nothing spent) if not."""
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.refill_per_s)
        self.updated = now
        if cost > self.tokens:
            return False
        self.tokens -= cost
        return True
