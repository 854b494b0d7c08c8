"""Least-squares fits behind calibration (pure functions, no process group).

Contract:
- ``fit_link(samples, n)`` fits one link's per-step latency ``alpha`` and bandwidth
  ``bw`` to the ring terms of ``comm.ring_terms``: for every sample
  ``(kind, nbytes, seconds)`` (``nbytes`` = the FULL tensor),
  ``seconds ~= steps * alpha + volume / bw``, minimising RELATIVE residuals (times span
  orders of magnitude); a negative alpha is clamped to 0 and the bandwidth refitted.
- ``fit_rate(samples)`` fits ``seconds ~= overhead + work / rate`` the same way.
Both return frozen fits with the relative RMS residual and raise ValueError on bad input
(fewer than 2 samples, one distinct size, non-positive or non-finite times, negative
sizes, unknown kinds, a group of fewer than 2 ranks, times that do not grow with size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cost_models import _validate as v
from cost_models.comm import COLLECTIVE_KINDS, ring_terms


@dataclass(frozen=True)
class LinkFit:
    alpha: float  # seconds per latency step
    bandwidth: float  # bytes/s per device
    rms_rel_error: float  # root mean square of (predicted - measured) / measured
    samples: int

    def predict(self, kind: str, nbytes: float, n: int) -> float:
        volume, steps = ring_terms(kind, nbytes, n)
        return steps * self.alpha + volume / self.bandwidth


@dataclass(frozen=True)
class RateFit:
    overhead_s: float  # seconds a zero-size call costs
    rate: float  # work units per second (FLOP/s or bytes/s)
    rms_rel_error: float
    samples: int


def _lsq(rows: Sequence[tuple[float, float]], ys: Sequence[float]) -> tuple[float, float, float]:
    """Relative least squares of y ~= a * r0 + b * r1 with a >= 0, b > 0; (a, b, rms)."""
    w = [1.0 / y for y in ys]  # minimise sum(((a r0 + b r1) - y) / y)^2
    s00 = sum((wi * r0) ** 2 for wi, (r0, _) in zip(w, rows))
    s11 = sum((wi * r1) ** 2 for wi, (_, r1) in zip(w, rows))
    s01 = sum(wi * wi * r0 * r1 for wi, (r0, r1) in zip(w, rows))
    t0 = sum(wi * wi * r0 * y for wi, (r0, _), y in zip(w, rows, ys))
    t1 = sum(wi * wi * r1 * y for wi, (_, r1), y in zip(w, rows, ys))
    det = s00 * s11 - s01 * s01
    if det <= 1e-12 * max(s00 * s11, 1e-300):
        raise ValueError(
            "cannot fit latency and bandwidth apart: the samples need at least two "
            "distinct message sizes (give sizes spanning small and large messages)"
        )
    a = (t0 * s11 - t1 * s01) / det
    b = (t1 * s00 - t0 * s01) / det
    if a < 0:  # latency cannot be negative: bandwidth alone
        a, b = 0.0, t1 / s11
    if b <= 0:
        raise ValueError(
            f"measured times do not grow with the message size (fitted slope {b:.3g} s/byte); "
            "no bandwidth can be fitted: measure larger messages or on a quieter machine"
        )
    res = [(a * r0 + b * r1 - y) * wi for (r0, r1), y, wi in zip(rows, ys, w)]
    return a, b, math.sqrt(sum(r * r for r in res) / len(res))


def _check_samples(what: str, samples: Sequence[tuple[Any, ...]]) -> None:
    if not isinstance(samples, Sequence) or len(samples) < 2:
        raise ValueError(
            f"{what} needs at least 2 samples (size, seconds) of distinct sizes, got {samples!r}"
        )


def fit_link(samples: Sequence[tuple[str, float, float]], n: int) -> LinkFit:
    """Fit alpha and bandwidth to ``(kind, nbytes, seconds)`` samples over ``n`` ranks."""
    _check_samples("fit_link", samples)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"fit_link needs a group of n >= 2 ranks, got n={n!r}")
    rows, ys = [], []
    for sample in samples:
        if not isinstance(sample, tuple) or len(sample) != 3:
            raise ValueError(f"fit_link samples are (kind, nbytes, seconds), got {sample!r}")
        kind, nbytes, seconds = sample
        if kind not in COLLECTIVE_KINDS:
            raise ValueError(
                f"unknown collective {kind!r} in fit_link; use one of {list(COLLECTIVE_KINDS)}"
            )
        volume, steps = ring_terms(kind, v.positive(f"{kind} message bytes", nbytes), n)
        rows.append((float(steps), volume))
        ys.append(v.positive(f"measured seconds of {kind} of {nbytes} bytes", seconds))
    alpha, inv_bw, rms = _lsq(rows, ys)
    return LinkFit(alpha, 1.0 / inv_bw, rms, len(rows))


def fit_rate(samples: Sequence[tuple[float, float]]) -> RateFit:
    """Fit ``seconds ~= overhead + work / rate`` to ``(work, seconds)`` samples."""
    _check_samples("fit_rate", samples)
    rows, ys = [], []
    for sample in samples:
        if not isinstance(sample, tuple) or len(sample) != 2:
            raise ValueError(f"fit_rate samples are (work, seconds), got {sample!r}")
        rows.append((1.0, v.positive("work of a sample", sample[0])))
        ys.append(v.positive("measured seconds", sample[1]))
    overhead, inv_rate, rms = _lsq(rows, ys)
    return RateFit(overhead, 1.0 / inv_rate, rms, len(rows))
