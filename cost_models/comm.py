"""Alpha-beta cost of ring collectives.

Contract: ``collective_time(kind, nbytes, n, link)`` returns seconds for one collective
over a group of ``n`` ranks on ``link`` (per-device bandwidth ``bw``, per-step latency
``alpha``). ``nbytes`` (B) is always the FULL, unsharded tensor size in bytes:

    kind            bandwidth term          latency steps
    all_reduce      2(n-1)/n * B / bw       2(n-1)
    all_gather      (n-1)/n  * B / bw       n-1        (B = gathered output)
    reduce_scatter  (n-1)/n  * B / bw       n-1        (B = unreduced input)
    all_to_all      (n-1)/n  * B / bw       n-1        (B = one rank's buffer; it keeps
                                                        1/n and sends the rest)
    broadcast       B / bw                  n-1        (pipelined ring)
    send_recv       B / bw                  1          (point to point; n ignored
                                                        beyond n == 1)

A group of one rank (``n == 1``) or an empty message (``nbytes == 0``) costs 0.0.
Unknown kinds raise ValueError listing ``COLLECTIVE_KINDS``. ``ring_terms(kind, nbytes,
n)`` gives the (volume, steps) pair of the table, the terms ``calibrate`` fits to.
"""

from __future__ import annotations

from cost_models import _validate as v
from cost_models.cluster import LinkSpec

COLLECTIVE_KINDS = (
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "broadcast",
    "send_recv",
)


def ring_terms(kind: str, nbytes: float, n: int) -> tuple[float, int]:
    """(bytes each rank moves, latency steps) of collective ``kind`` in the table above;
    ``(0.0, 0)`` for one rank or an empty message. ``calibrate`` fits alpha and
    bandwidth to exactly these terms."""
    if kind not in COLLECTIVE_KINDS:
        raise ValueError(f"unknown collective {kind!r}; expected one of {list(COLLECTIVE_KINDS)}")
    nbytes = v.non_negative("nbytes", nbytes)
    v.positive_int("group size n", n)
    if n == 1 or nbytes == 0:
        return 0.0, 0
    frac = (n - 1) / n
    if kind == "all_reduce":
        return 2 * frac * nbytes, 2 * (n - 1)
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return frac * nbytes, n - 1
    if kind == "broadcast":
        return nbytes, n - 1
    return nbytes, 1  # send_recv


def collective_time(kind: str, nbytes: float, n: int, link: LinkSpec) -> float:
    """Seconds for collective ``kind`` of a full tensor of ``nbytes`` bytes over ``n`` ranks."""
    volume, steps = ring_terms(kind, nbytes, n)
    if steps == 0:
        return 0.0
    return volume / link.bandwidth + steps * link.alpha
