"""What `--precision auto` means on the machine at hand.

Training runs under bf16 autocast wherever the hardware computes bf16 natively: GPUs that support
it, and CPUs with avx512_bf16 or AMX, where a MiniLM training step is 2x faster (with eager
attention, `model.eager_attention`) and DALLMi's macro mAP moved by under 0.004 per seed
(docs/BENCHMARKS.md). Older GPUs get fp16 with a loss scaler; every other device float32 (a CPU
without native bf16 only emulates it, slower than float32). `DALLMI_CPU_BF16=0` keeps float32 on
every CPU, so a run's numbers do not depend on the CPU it lands on (the test suite sets it); `=1`
forces bf16 on any CPU. Scoring is not affected: CPU scores stay float32 (`scoring.autocast_for`).
"""

from __future__ import annotations

import os

import torch

CPU_BF16_ENV = "DALLMI_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with avx512_bf16 or AMX tiles, unless DALLMI_CPU_BF16 says otherwise."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    # torch.cpu's probes are private (torch 2.1+); a torch without them counts as no support
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(precision: str, device_type: str) -> str:
    """The precision `auto` stands for on a device type (bf16, fp16 or no = float32); others pass through."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def cpu_bf16(device_type: str, resolved_precision: str) -> bool:
    """A CPU run under bf16 autocast: its training forwards use eager attention (`model.eager_attention`)."""
    return device_type == "cpu" and resolved_precision == "bf16"
