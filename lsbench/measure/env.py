"""The environment fingerprint recorded with every run (and printed by `lsbench env`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import torch

import lsbench


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the lsbench source tree, if it is a git checkout."""
    path = path or Path(lsbench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def cuda_info() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    idx = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    driver = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 2),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": driver,
        # TF32 defaults of this process; a run sets its own (suite matmul_precision, per row)
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(),
        "mem_efficient_sdp_enabled": torch.backends.cuda.mem_efficient_sdp_enabled(),
    }


def fingerprint() -> dict[str, Any]:
    """Everything needed to judge whether two runs are comparable."""
    vm = psutil.virtual_memory()
    return {
        "lsbench": lsbench.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "python_impl": sys.implementation.name,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(vm.total / 2**30, 2),
        "ram_available_gib": round(vm.available / 2**30, 2),
        "cuda": cuda_info(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def device_name(env: dict[str, Any], device: str) -> str:
    """A short name for the device a run used: the GPU's name or the CPU model."""
    if device.startswith("cuda") and env.get("cuda"):
        return env["cuda"]["name"]
    return env.get("cpu_model", "cpu")
