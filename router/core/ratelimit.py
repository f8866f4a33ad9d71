"""Local rate limiting (Envoy's local_ratelimit, nginx's limit_req): token buckets, pure, with time
passed in.

A bucket holds up to `burst` tokens and gains `rate` tokens a second; a request takes one or is refused
with the time until one is there. A route has one bucket, or one per key (client address, a header's
value), at most `max_keys` of them: when a new key finds them all taken, the one used longest ago goes
(it restarts full, which is what a key unseen that long would have anyway once refilled).
"""
from __future__ import annotations

MAX_KEYS = 100_000


def draw(tokens: float, elapsed: float, rate: float, burst: int) -> tuple[float, float]:
    """A bucket that held `tokens` `elapsed` seconds ago, asked for one token now: (tokens left, 0.0) when it
    gave one, else (tokens it holds, seconds until the next one)."""
    if elapsed > 0:
        tokens += elapsed * rate
        if tokens > burst:
            tokens = float(burst)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class RateLimiter:
    __slots__ = ("rate", "burst", "max_keys", "buckets")

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_KEYS):
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: dict[str, list[float]] = {}  # key -> [tokens, when counted]; least recently used first

    def take(self, key: str, now: float) -> float:
        """0.0 when a token was taken (the request may go), else the seconds until the next token."""
        buckets = self.buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                del buckets[next(iter(buckets))]
            bucket = [float(self.burst), now]
        buckets[key] = bucket  # most recently used last
        bucket[0], wait = draw(bucket[0], now - bucket[1], self.rate, self.burst)
        bucket[1] = now
        return wait

    def count(self) -> int:
        """How many buckets (keys) are held."""
        return len(self.buckets)
