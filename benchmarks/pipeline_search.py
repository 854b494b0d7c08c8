"""Planning time of the 3D (pp x dp x tp) search on big shapes, on this machine.

Prints, for a 70B LLaMA (80 layers) on 8x8xH100 and a GPT-3 175B-shaped model (96
layers, hidden 12288, sequence 2048) on 128x8xA100-80GB, the capture and search
seconds (limits: 60 s and 120 s) and the best meshes with predicted step times. The
graphs are captured on the meta device with 2 blocks; ``search_3d(layers=...)`` prices
the full depth from the repeated block.  Run: ``python3 -m benchmarks.pipeline_search``.
"""

from __future__ import annotations

import time
import warnings

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from autopar.capture import capture
from autopar.pipeline.search import search_3d
from cost_models import ClusterSpec

CASES = [
    ("llama-70b", "8x8xH100", 512, 4096, 80, 60.0,
     lambda: LlamaForCausalLM(LlamaConfig(hidden_size=8192, intermediate_size=28672,
                                          num_hidden_layers=2, num_attention_heads=64,
                                          num_key_value_heads=8, vocab_size=32000,
                                          use_cache=False))),
    ("gpt3-175b", "128x8xA100-80GB", 1536, 2048, 96, 120.0,
     lambda: GPT2LMHeadModel(GPT2Config(n_embd=12288, n_layer=2, n_head=96, vocab_size=51200,
                                        n_positions=2048, use_cache=False))),
]  # fmt: skip


def main() -> None:
    warnings.simplefilter("ignore")
    for name, cluster, batch, seq, layers, limit, make in CASES:
        start = time.perf_counter()
        with torch.device("meta"):
            model = make()
        ids = torch.empty((1, seq), dtype=torch.long, device="meta")
        cap = capture(model, (), {"input_ids": ids, "labels": ids})
        ranked = search_3d(cap, ClusterSpec.parse(cluster), batch, layers=layers)
        took = time.perf_counter() - start
        verdict = "ok" if took <= limit else "OVER LIMIT"
        print(f"{name} on {cluster}, batch {batch}: {took:.1f} s (limit {limit:.0f} s) {verdict}")
        for c in ranked[:5]:
            print(f"  {str(c.mesh):<32} m={c.microbatches:<5} step {c.step_s:8.3f} s  "
                  f"bubble {c.bubble:.3f}  memory {c.memory_bytes / 2**30:6.1f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
