"""autopar's generated program against PyTorch-native code on the same plan, side by side.

Usage: ``python benchmarks/runtime_vs_native.py [--steps 12] [--configs small4 tiny]
[--pairs dp fsdp tp pp] [--precision fp32]``. On 2 gloo ranks (one thread each; NCCL when
2 GPUs are there), in ONE run, for each configuration and each pair it builds the same
model with the same weights twice and times a full training step (forward, backward,
AdamW step) of each, steps interleaved, and prints the median step time after 2 warm-up
steps and the ratio autopar / native (goal <= 1.00, required < 1.10):
- ``dp``   autopar ``strategy="dp"``  vs ``DistributedDataParallel``;
- ``fsdp`` autopar ``strategy="fsdp"`` vs FSDP2 (``fully_shard`` per block, then the root);
- ``tp``   autopar ``strategy="tp"``  vs ``parallelize_module`` (Colwise q/k/v/gate/up,
  Rowwise o/down), on LLaMA-style models (GPT-2's Conv1D layers have no native TP plan);
- ``pp``   autopar ``mesh={"pp": 2}`` vs ``torch.distributed.pipelining`` with the same
  two stages (``pipeline()`` split at the same block), 1F1B, the same microbatches.
Both sides see the same global batch per step (native data parallelism gets each rank's
half). Configurations: ``small4`` = GPT-2 small's shape (768 hidden, 12 heads, vocabulary
50257) cut to 4 layers, and a LLaMA of the same shape for tp; ``tiny`` = the bundled
gpt2-tiny and llama-tiny. Quote figures from a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Any

BATCH, SEQ = 8, 128


def _models(config: str, pair: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from autopar.models import resolve

    llama = pair == "tp"
    if config == "tiny":
        return resolve("llama-tiny" if llama else "gpt2-tiny")
    torch.manual_seed(0)
    if llama:
        cfg: Any = LlamaConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=4,
                               num_attention_heads=12, num_key_value_heads=12, vocab_size=50257,
                               max_position_embeddings=1024)  # fmt: skip
        model: Any = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(n_embd=768, n_layer=4, n_head=12, vocab_size=50257, n_positions=1024,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        model = GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
    return model, (), {"input_ids": ids, "labels": ids.clone()}


def _blocks(model: Any) -> list[Any]:
    inner = getattr(model, "transformer", None) or model.model
    return list(getattr(inner, "h", None) or inner.layers)


def _native(pair: str, model: Any, kwargs: dict[str, Any], rank: int, world: int) -> Any:
    """(train-step function) of the PyTorch-native implementation of ``pair``."""
    import torch
    import torch.distributed as dist

    half = {k: v.chunk(world)[rank] for k, v in kwargs.items()}
    if pair == "dp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)

        def step() -> float:
            opt.zero_grad()
            loss = ddp(**half).loss
            loss.backward()
            opt.step()
            return float(loss)

        return step
    if pair == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        model.set_force_sum_reduction_for_comms(True)  # gloo has no AVG reduction
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> float:
            opt.zero_grad()
            loss = model(**half).loss
            loss.backward()
            opt.step()
            return float(loss)

        return step
    if pair == "tp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
        col, row = ColwiseParallel(), RowwiseParallel()
        plan = {"self_attn.q_proj": col, "self_attn.k_proj": col, "self_attn.v_proj": col,
                "self_attn.o_proj": row, "mlp.gate_proj": col, "mlp.up_proj": col,
                "mlp.down_proj": row}  # fmt: skip
        for block in _blocks(model):
            parallelize_module(block, mesh, plan)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> float:
            opt.zero_grad()
            loss = model(**kwargs).loss
            loss.backward()
            opt.step()
            return float(loss)

        return step
    if pair == "pp":
        import torch.nn.functional as F
        from torch.distributed.pipelining import Schedule1F1B, SplitPoint, pipeline

        blocks = _blocks(model)
        prefix = "transformer.h" if hasattr(model, "transformer") else "model.layers"
        cut = f"{prefix}.{len(blocks) // 2}"
        m = 4
        ids = kwargs["input_ids"]
        batch = ids.shape[0]
        model.config.use_cache = False  # pipeline() traces the model; a cache cannot be sent
        pipe = pipeline(model, mb_args=(), mb_kwargs={"input_ids": ids[: batch // m]},
                        split_spec={cut: SplitPoint.BEGINNING})  # fmt: skip
        stage = pipe.build_stage(rank, torch.device("cpu"))
        opt = torch.optim.AdamW(stage.submod.parameters(), lr=1e-4)

        def loss_fn(out: Any, target: Any) -> Any:  # what HF's causal-LM loss computes
            logits = out[0] if isinstance(out, (tuple, list)) else out
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target[:, 1:].flatten())

        sched = Schedule1F1B(stage, m, loss_fn=loss_fn)

        def step() -> float:
            opt.zero_grad()
            losses: list[Any] = []
            if rank == 0:
                sched.step(input_ids=ids, target=kwargs["labels"], losses=losses)
            else:
                sched.step(target=kwargs["labels"], losses=losses)
            val = torch.stack(losses).mean() if losses else torch.zeros(())
            dist.broadcast(val, src=world - 1)
            return float(val)

        return step
    raise ValueError(pair)


def _autopar(pair: str, model: Any, kwargs: dict[str, Any], precision: str) -> Any:
    import torch

    import autopar

    opts: dict[str, Any] = {"precision": precision}
    if pair == "pp":
        opts.update(mesh={"pp": 2}, pipeline={"schedule": "1f1b", "microbatches": 4})
    else:
        opts["strategy"] = pair
    compiled = autopar.compile(model, (), kwargs, **opts)
    opt = torch.optim.AdamW(compiled.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad()
        loss = compiled.step(**kwargs)
        opt.step()
        return float(loss)

    return step


def _rank(rank: int, world: int, configs: list[str], pairs: list[str], steps: int,
          precision: str) -> list[dict[str, Any]]:  # fmt: skip
    import torch
    import torch.distributed as dist

    warnings.simplefilter("ignore")
    rows = []
    for config in configs:
        for pair in pairs:
            model, _, kwargs = _models(config, pair)
            native_model = copy.deepcopy(model)
            ours = _autopar(pair, model, kwargs, precision)
            theirs = _native(pair, native_model, kwargs, rank, world)
            times: dict[str, list[float]] = {"autopar": [], "native": []}
            losses: dict[str, list[float]] = {"autopar": [], "native": []}
            for _ in range(steps + 2):
                for name, fn in (("autopar", ours), ("native", theirs)):
                    dist.barrier()
                    t0 = time.perf_counter()
                    losses[name].append(fn())
                    times[name].append(time.perf_counter() - t0)
            slow = torch.tensor([statistics.median(times[k][2:]) for k in ("autopar", "native")])
            dist.all_reduce(slow, op=dist.ReduceOp.MAX)
            rows.append({"config": config, "pair": pair, "autopar_s": float(slow[0]),
                         "native_s": float(slow[1]), "loss_autopar": losses["autopar"][-1],
                         "loss_native": losses["native"][-1]})  # fmt: skip
            del ours, theirs
    return rows


NATIVE = {"dp": "DDP", "fsdp": "FSDP2", "tp": "parallelize_module", "pp": "pipelining 1F1B"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--configs", nargs="+", default=["small4", "tiny"])
    p.add_argument("--pairs", nargs="+", default=["dp", "fsdp", "tp", "pp"])
    p.add_argument("--precision", default="fp32")
    p.add_argument("--timeout", type=float, default=3000.0)
    args = p.parse_args()
    from autopar.runtime.ranks import spawn_ranks

    rows = spawn_ranks(_rank, 2, (args.configs, args.pairs, args.steps, args.precision),
                       timeout_s=args.timeout, what="runtime_vs_native")[0]  # fmt: skip
    print(f"{'config':<8} {'pair':<5} {'native':<20} {'autopar ms':>11} {'native ms':>10} "
          f"{'ratio':>6}  loss (autopar / native, last step)")  # fmt: skip
    worst = 0.0
    for r in rows:
        ratio = r["autopar_s"] / r["native_s"]
        worst = max(worst, ratio)
        print(f"{r['config']:<8} {r['pair']:<5} {NATIVE[r['pair']]:<20} "
              f"{r['autopar_s'] * 1e3:>11.1f} {r['native_s'] * 1e3:>10.1f} {ratio:>6.2f}  "
              f"{r['loss_autopar']:.4f} / {r['loss_native']:.4f}")  # fmt: skip
    verdict = "goal met" if worst <= 1.0 else ("required met" if worst < 1.10 else "NOT met")
    print(f"worst ratio {worst:.2f}: {verdict} (goal <= 1.00, required < 1.10)")


if __name__ == "__main__":
    main()
