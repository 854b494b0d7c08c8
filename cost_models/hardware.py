"""DeviceSpec: the throughput figures of one accelerator (or one CPU process).

Contract: a ``DeviceSpec`` is a frozen value holding peak dense FLOP/s per dtype key
("bf16", "fp16", "fp32", optionally "tf32"/"fp8"/"fp64"), memory size and bandwidth,
the effective per-device collective bus bandwidth inside a node and between nodes, the
per-message latencies (alpha), a per-kernel launch floor, the fractions of peak
that matmuls and memory traffic reach in practice, ``attention_efficiency`` (the fraction
of the matmul rate fused attention kernels reach; 1.0 unless measured) and
``special_rates`` (evaluations per second of special functions, keyed "exp", "tanh",
"erf", "log"; a function with no figure never bounds an op: GPUs' special-function units
keep such ops memory bound, CPUs may not). Figures are SI (1 GB/s = 1e9 B/s);
memory sizes are bytes. ``DEVICES`` is the immutable table of known devices and
``lookup_device(name)`` resolves case-insensitive names and aliases.

The table is a model, not a measurement: bus bandwidths are round numbers chosen to
be conservative (see ``_build_devices``); a measured ``Profile`` overrides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from cost_models import _validate as v
from cost_models.dtypes import FLOAT_KEYS

GiB = 2**30
SPECIAL_FUNCTIONS = ("exp", "tanh", "erf", "log")

# When a dtype has no figure, try these in order before falling back to "fp32".
_FLOPS_FALLBACK: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "fp8": ("bf16", "fp16"),
        "bf16": ("fp16",),
        "fp16": ("bf16",),
        "tf32": ("fp32",),
        "fp64": ("fp32",),
    }
)


def special_rate_map(what: str, value: Any) -> Mapping[str, float]:
    """A read-only ``{special function: positive rate}`` copy of ``value``."""
    rates = v.frozen_float_map(what, value)
    bad = sorted(set(rates) - set(SPECIAL_FUNCTIONS))
    if bad:
        raise ValueError(f"{what} has unknown functions {bad}; use {list(SPECIAL_FUNCTIONS)}")
    return rates


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    flops: Mapping[str, float]  # dtype key -> peak dense FLOP/s
    memory_bytes: int
    mem_bw: float  # bytes/s, peak HBM/DRAM bandwidth
    intra_node_bw: float  # bytes/s, effective per-device collective bus bandwidth
    inter_node_bw: float  # bytes/s, per-device scale-out bandwidth
    intra_alpha: float  # seconds per message step inside a node
    inter_alpha: float  # seconds per message step between nodes
    launch_floor_s: float  # minimum time of any kernel
    matmul_efficiency: float  # achieved / peak FLOP/s, in (0, 1]
    memory_efficiency: float  # achieved / peak bandwidth, in (0, 1]
    attention_efficiency: float = 1.0  # fused attention rate / matmul rate
    special_rates: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"device name must be a non-empty string, got {self.name!r}")
        flops = v.frozen_float_map(f"flops of device {self.name!r}", self.flops)
        if "fp32" not in flops:
            raise ValueError(
                f"flops of device {self.name!r} must include 'fp32' (the fallback rate), "
                f"got keys {sorted(flops)}"
            )
        unknown = sorted(set(flops) - set(FLOAT_KEYS))
        if unknown:
            raise ValueError(
                f"flops of device {self.name!r} has unknown dtype keys {unknown}; "
                f"use keys from {list(FLOAT_KEYS)}"
            )
        object.__setattr__(self, "flops", flops)
        v.positive_int(f"memory_bytes of device {self.name!r}", self.memory_bytes)
        for f in ("mem_bw", "intra_node_bw", "inter_node_bw"):
            object.__setattr__(
                self, f, v.positive(f"{f} of device {self.name!r}", getattr(self, f))
            )
        for f in ("intra_alpha", "inter_alpha", "launch_floor_s"):
            object.__setattr__(
                self, f, v.non_negative(f"{f} of device {self.name!r}", getattr(self, f))
            )
        object.__setattr__(
            self,
            "special_rates",
            special_rate_map(f"special_rates of device {self.name!r}", self.special_rates),
        )
        object.__setattr__(
            self,
            "attention_efficiency",
            v.positive(f"attention_efficiency of device {self.name!r}", self.attention_efficiency),
        )
        for f in ("matmul_efficiency", "memory_efficiency"):
            object.__setattr__(
                self, f, v.fraction(f"{f} of device {self.name!r}", getattr(self, f))
            )

    def __hash__(self) -> int:
        items = tuple(
            tuple(sorted(getattr(self, f.name).items()))
            if f.name in ("flops", "special_rates")
            else getattr(self, f.name)
            for f in fields(self)
        )
        return hash(items)

    @property
    def is_cpu(self) -> bool:
        return self.name.upper() == "CPU"

    def peak_flops(self, key: str) -> float:
        """Peak FLOP/s for dtype key ``key`` (see ``cost_models.dtypes``), with fallbacks."""
        for k in (key, *_FLOPS_FALLBACK.get(key, ()), "fp32"):
            if k in self.flops:
                return self.flops[k]
        raise AssertionError("unreachable: fp32 is validated to be present")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["flops"] = dict(self.flops)
        out["special_rates"] = dict(self.special_rates)
        return out

    @staticmethod
    def from_json(obj: Any) -> DeviceSpec:
        """Parse the ``to_json`` form, or a known device name string."""
        if isinstance(obj, str):
            return lookup_device(obj)
        optional = {"attention_efficiency", "special_rates"}
        names = {f.name for f in fields(DeviceSpec)} - optional
        d = v.check_keys("device", obj, names, optional)
        return DeviceSpec(**d)


def _gpu(
    name: str,
    *,
    flops: dict[str, float],
    memory_gib: float,
    mem_bw: float,
    intra_bw: float,
    inter_bw: float,
) -> DeviceSpec:
    return DeviceSpec(
        name=name,
        flops=flops,
        memory_bytes=int(memory_gib * GiB),
        mem_bw=mem_bw,
        intra_node_bw=intra_bw,
        inter_node_bw=inter_bw,
        # alpha is paid per ring step (2(n-1) steps for an all-reduce), so it is NCCL's
        # per-hop latency, not a whole collective's: NCCL's tuning model (src/graph/
        # tuning.cc, hwLat, Ring/Simple) charges 3.4 us per NVLink step and 14 us per step
        # that crosses the network. A multi-node group is priced at inter_alpha on every
        # step: 5 us is the mean over a ring through 8-GPU nodes, (7 x 3.4 + 14) / 8 = 4.7.
        intra_alpha=3.4e-6,
        inter_alpha=5e-6,
        launch_floor_s=5e-6,  # CUDA kernel launch + tail, order of 5 us
        matmul_efficiency=0.75,  # large bf16 GEMMs reach ~70-80% of dense peak
        memory_efficiency=0.8,  # streaming kernels reach ~80% of HBM peak
    )


def _build_devices() -> Mapping[str, DeviceSpec]:
    """The known-device table. Sources: NVIDIA datasheets (dense, no sparsity).

    Bus bandwidths are *effective per-device* figures for ring collectives, kept round
    and conservative on purpose: intra-node V100 120e9, A100 150e9, H100/H200 320e9
    (NVLink), L40S 25e9 (PCIe Gen4 x16); inter-node 25e9 per GPU for A100 clusters
    (200 Gb/s NIC per GPU), 50e9 for H100/H200 (400 Gb/s per GPU), 12.5e9 otherwise.
    """
    devs = [
        # V100 SXM2 32GB datasheet: 125 TF fp16 tensor, 15.7 TF fp32, 900 GB/s HBM2,
        # NVLink 300 GB/s bidirectional. No bf16 tensor cores: bf16 runs at fp32 rate.
        _gpu(
            "V100",
            flops={"fp16": 125e12, "bf16": 15.7e12, "fp32": 15.7e12, "fp64": 7.8e12},
            memory_gib=32,
            mem_bw=900e9,
            intra_bw=120e9,
            inter_bw=12.5e9,
        ),
        # A100 SXM4 datasheet: 312 TF bf16/fp16, 156 TF tf32, 19.5 TF fp32, 1.555 TB/s.
        _gpu(
            "A100-40GB",
            flops={"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "fp64": 9.7e12},
            memory_gib=40,
            mem_bw=1.555e12,
            intra_bw=150e9,
            inter_bw=25e9,
        ),
        # A100 80GB SXM4 datasheet: same compute, 2.039 TB/s HBM2e.
        _gpu(
            "A100-80GB",
            flops={"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "fp64": 9.7e12},
            memory_gib=80,
            mem_bw=2.039e12,
            intra_bw=150e9,
            inter_bw=25e9,
        ),
        # H100 SXM5 80GB datasheet: 989 TF bf16/fp16 dense, 1979 TF fp8, 494.7 TF tf32,
        # 67 TF fp32, 3.35 TB/s HBM3.
        _gpu(
            "H100",
            flops={
                "fp8": 1979e12,
                "bf16": 989e12,
                "fp16": 989e12,
                "tf32": 494.7e12,
                "fp32": 67e12,
                "fp64": 34e12,
            },
            memory_gib=80,
            mem_bw=3.35e12,
            intra_bw=320e9,
            inter_bw=50e9,
        ),
        # H200 SXM datasheet: H100 compute, 141 GB HBM3e at 4.8 TB/s. nvidia-smi shows
        # 143771 MiB ~ 140 GiB usable.
        _gpu(
            "H200",
            flops={
                "fp8": 1979e12,
                "bf16": 989e12,
                "fp16": 989e12,
                "tf32": 494.7e12,
                "fp32": 67e12,
                "fp64": 34e12,
            },
            memory_gib=140,
            mem_bw=4.8e12,
            intra_bw=320e9,
            inter_bw=50e9,
        ),
        # L40S datasheet: 362 TF bf16/fp16 dense, 733 TF fp8, 183 TF tf32, 91.6 TF fp32,
        # 48 GB GDDR6 at 864 GB/s, PCIe Gen4 x16 (64 GB/s bidirectional), no NVLink.
        _gpu(
            "L40S",
            flops={"fp8": 733e12, "bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
            memory_gib=48,
            mem_bw=864e9,
            intra_bw=25e9,
            inter_bw=12.5e9,
        ),
        # One CPU process (gloo backend), a rough stand-in used for tests and dry runs:
        # ~50 GFLOP/s per process, ~10 GB/s DRAM share, gloo over loopback ~1 GB/s with
        # ~50 us per message, 8 GiB assumed per process.
        DeviceSpec(
            name="CPU",
            flops={"bf16": 50e9, "fp16": 50e9, "fp32": 50e9, "fp64": 25e9},
            memory_bytes=8 * GiB,
            mem_bw=10e9,
            intra_node_bw=1e9,
            inter_node_bw=1e9,
            intra_alpha=50e-6,
            inter_alpha=100e-6,
            launch_floor_s=10e-6,  # eager op dispatch overhead
            matmul_efficiency=0.5,
            memory_efficiency=0.6,
        ),
    ]
    return MappingProxyType({d.name: d for d in devs})


DEVICES: Mapping[str, DeviceSpec] = _build_devices()

# Normalised alias (upper case, no spaces or underscores) -> canonical DEVICES key.
# Bare "A100" means the 80GB part, the common one in current clusters.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "V100": "V100",
        "V100-32GB": "V100",
        "V100-SXM2-32GB": "V100",
        "A100": "A100-80GB",
        "A100-80GB": "A100-80GB",
        "A100-80G": "A100-80GB",
        "A100-SXM4-80GB": "A100-80GB",
        "A100-40GB": "A100-40GB",
        "A100-40G": "A100-40GB",
        "A100-SXM4-40GB": "A100-40GB",
        "H100": "H100",
        "H100-80GB": "H100",
        "H100-SXM": "H100",
        "H100-SXM5": "H100",
        "H200": "H200",
        "H200-141GB": "H200",
        "L40S": "L40S",
        "L40S-48GB": "L40S",
        "CPU": "CPU",
        "GLOO": "CPU",
    }
)


def known_device_names() -> list[str]:
    """Canonical names in ``DEVICES`` (for error messages)."""
    return list(DEVICES)


def lookup_device(name: str) -> DeviceSpec:
    """Resolve ``name`` case-insensitively ("h100", "A100" = A100-80GB, "a100-40gb", "cpu")."""
    if not isinstance(name, str):
        raise ValueError(f"device name must be a string, got {name!r}")
    key = "".join(name.split()).upper().replace("_", "-")
    canonical = _ALIASES.get(key)
    if canonical is None:
        raise ValueError(
            f"unknown device {name!r}; known devices are {known_device_names()} "
            f"(aliases: {sorted(_ALIASES)})"
        )
    return DEVICES[canonical]
