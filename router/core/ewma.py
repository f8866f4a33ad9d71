"""Peak-EWMA (as in Finagle and Linkerd): a latency estimate that jumps up at once on a
slower sample and decays toward faster samples with time constant `decay_s`.

Pure: the caller passes `now` (seconds, any monotonic origin).
"""
from __future__ import annotations

import math


class PeakEwma:
    __slots__ = ("decay_s", "value", "stamp", "samples")

    def __init__(self, decay_s: float = 10.0, prior: float | None = None):
        self.decay_s = decay_s
        self.value = prior
        self.stamp: float | None = None
        self.samples = 0

    def observe(self, sample: float, now: float) -> float:
        self.samples += 1
        if self.stamp is None:
            self.value = sample  # the first measurement replaces the prior
        elif sample > self.value:
            self.value = sample  # the peak: react to a slowdown at once
        else:
            elapsed = now - self.stamp
            w = math.exp(-elapsed / self.decay_s) if elapsed > 0.0 else 1.0
            self.value = self.value * w + sample * (1.0 - w)
        self.stamp = now
        return self.value

    def value_at(self, now: float) -> float | None:
        """The estimate (None before any sample and without a prior). It moves only on samples:
        a cluster that stops answering is handled by health, not by a fading estimate."""
        return self.value
