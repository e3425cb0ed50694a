"""What this machine can train on, probed once per process in a child interpreter so the app
process never imports torch or initialises CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class SystemInfo:
    cpu_cores: int
    gpus: tuple[tuple[str, float], ...]  # (name, memory in GiB) per CUDA device
    mps: bool
    torch_version: str | None
    note: str | None = None  # why the probe found nothing (e.g. torch failed to import)
    cpu_bf16: bool = False  # native bf16: `precision auto` trains under bf16 on this CPU (precision.py)

    @property
    def devices(self) -> tuple[str, ...]:
        """The AdaptConfig.device values that can run here ("auto" picks cuda > mps > cpu)."""
        return ("auto", "cpu") + (("cuda",) if self.gpus else ()) + (("mps",) if self.mps else ())

    @property
    def summary(self) -> str:
        if self.gpus:
            names = ", ".join(f"{name} ({memory:.0f} GiB)" for name, memory in self.gpus)
            return f"{len(self.gpus)} CUDA GPU{'s' * (len(self.gpus) > 1)}: {names}; {self.cpu_cores} CPU cores"
        if self.mps:
            return f"Apple GPU (MPS); {self.cpu_cores} CPU cores"
        bf16 = "; native bf16, so precision auto trains under bf16 autocast" if self.cpu_bf16 else ""
        return f"no GPU: CPU only, {self.cpu_cores} cores{bf16}"


_PROBE = """
import json, os
info = {"cpu_cores": os.cpu_count() or 1, "gpus": [], "mps": False, "torch": None}
import torch
info["torch"] = torch.__version__
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["gpus"].append([p.name, round(p.total_memory / 2**30, 1)])
mps = getattr(torch.backends, "mps", None)
info["mps"] = bool(mps is not None and mps.is_available())
from dallmi_core.modeling.precision import cpu_has_native_bf16
info["cpu_bf16"] = cpu_has_native_bf16()
print(json.dumps(info))
"""
_system_info: list[SystemInfo] = []  # the probe's answer, once per process


def system_info(timeout_s: float = 120.0) -> SystemInfo:
    if not _system_info:
        cores = os.cpu_count() or 1
        try:
            out = subprocess.run(
                [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, check=True
            ).stdout
            info = json.loads(out.strip().splitlines()[-1])
            found = SystemInfo(
                int(info["cpu_cores"]),
                tuple((str(n), float(m)) for n, m in info["gpus"]),
                bool(info["mps"]),
                info["torch"],
                cpu_bf16=bool(info.get("cpu_bf16")),
            )
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError) as exc:
            detail = exc.stderr.strip().splitlines()[-1] if getattr(exc, "stderr", None) else str(exc)
            found = SystemInfo(cores, (), False, None, note=f"could not ask torch about devices ({detail}).")
        _system_info.append(found)
    return _system_info[0]
