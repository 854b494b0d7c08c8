"""Sharding rules for neural-network ops: embedding, attention and the loss.

Contract:
- embedding(weight[V, H], ids): shard the ids (any dim) or the hidden dim of the table;
  or shard the vocabulary (rows) of the table, which needs the ``vocab_embedding``
  kernel: each rank looks up the ids it owns, zeros the rest, output ``Partial``.
- scaled_dot_product_attention(q, k, v, mask?): shard the batch or the heads (GQA keeps
  its grouping when both head counts divide), or the query sequence when the op is not
  ``is_causal`` (keys and values replicated).
- cross_entropy_loss(logits, target): shard the batch; with a mean or sum reduction of
  class indices the ``sharded_cross_entropy`` kernel reduces the local sum and the count
  of counted targets over the axis, so ``ignore_index`` is honoured exactly; the loss is
  replicated. Class-probability targets count every row: the local mean (sum) is a
  ``Partial("avg")`` (``Partial``) of the loss.
"""

from __future__ import annotations

from autopar.placement import P, Partial, Placement, R, Shard
from autopar.strategies.types import AxisStrategy, OpView


def _ok(size: int, n: int) -> bool:
    return size >= n and size % n == 0


def embedding_rule(op: OpView, n: int) -> list[AxisStrategy]:
    w, ids = op.inputs[0], op.inputs[1]
    found = [AxisStrategy((R, R), (R,), split=False)]
    for d, s in enumerate(ids.shape):
        if _ok(s, n):
            found.append(AxisStrategy((R, Shard(d)), (Shard(d),), split=True))
    if _ok(w.shape[1], n):
        found.append(AxisStrategy((Shard(1), R), (Shard(op.out.ndim - 1),), split=True))
    if _ok(w.shape[0], n) and op.arg(2, "padding_idx", -1) == -1:
        found.append(AxisStrategy((Shard(0), R), (P,), split=True, kernel="vocab_embedding"))
    return found


def sdpa_rule(op: OpView, n: int) -> list[AxisStrategy]:
    q, k, v = op.inputs[0], op.inputs[1], op.inputs[2]
    mask = op.inputs[3] if len(op.inputs) > 3 else None
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        return [AxisStrategy(tuple([R] * len(op.inputs)), (R,), split=False)]
    found = [AxisStrategy(tuple([R] * len(op.inputs)), (R,), split=False)]

    def with_mask(qkv: tuple[Placement, Placement, Placement], mdim: int) -> None:
        ins: tuple[Placement | None, ...] = qkv
        if mask is not None:
            md = mdim - (4 - mask.ndim)
            if md >= 0 and mask.shape[md] != 1:
                if not _ok(mask.shape[md], n):
                    return
                ins = qkv + (Shard(md),)
            else:
                ins = qkv + (R,)
        found.append(AxisStrategy(ins, (Shard(mdim),), split=True))

    if _ok(q.shape[0], n) and _ok(k.shape[0], n):
        with_mask((Shard(0), Shard(0), Shard(0)), 0)
    if _ok(q.shape[1], n) and _ok(k.shape[1], n) and _ok(v.shape[1], n):
        with_mask((Shard(1), Shard(1), Shard(1)), 1)
    if _ok(q.shape[2], n) and not op.arg(5, "is_causal", False):
        with_mask((Shard(2), R, R), 2)
    return found


def cross_entropy_rule(op: OpView, n: int) -> list[AxisStrategy]:
    logits = op.inputs[0]
    k = len(op.inputs)
    found = [AxisStrategy(tuple([R] * k), (R,), split=False)]
    weight = op.arg(2, "weight", None)
    reduction = op.arg(3, "reduction", 1)  # 0 none, 1 mean, 2 sum
    smoothing = op.arg(5, "label_smoothing", 0.0)
    if weight is not None or smoothing or not _ok(logits.shape[0], n):
        return found
    if reduction == 0:
        found.append(AxisStrategy((Shard(0), Shard(0)), (Shard(0),), split=True))
    elif op.inputs[1].is_float:  # class probabilities: every row counts, no ignore_index
        out = Partial("avg") if reduction == 1 else P
        found.append(AxisStrategy((Shard(0), Shard(0)), (out,), split=True))
    else:
        found.append(
            AxisStrategy((Shard(0), Shard(0)), (R,), split=True, kernel="sharded_cross_entropy")
        )
    return found


def replicate_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """Ops that must see whole tensors: factories, gathers by index, scans, sorts."""
    return [AxisStrategy(tuple([R] * len(op.inputs)), tuple(R for _ in op.outputs), False)]


RULES = {
    "embedding": embedding_rule,
    "scaled_dot_product_attention": sdpa_rule,
    "cross_entropy_loss": cross_entropy_rule,
}


def pointwise_loss_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """mse_loss / l1_loss / smooth_l1_loss / huber_loss(input, target, reduction)."""
    x = op.inputs[0]
    reduction = op.arg(2, "reduction", 1)
    found = [AxisStrategy(tuple([R] * len(op.inputs)), (R,), split=False)]
    for d, s in enumerate(x.shape):
        if not _ok(s, n) or any(m.shape != x.shape for m in op.inputs):
            continue
        out: Placement = Shard(d) if reduction == 0 else (P if reduction == 2 else Partial("avg"))
        found.append(AxisStrategy(tuple(Shard(d) for _ in op.inputs), (out,), split=True))
    return found


RULES.update(
    {name: pointwise_loss_rule for name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")}
)
