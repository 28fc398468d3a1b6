"""CPU taken from outside the guest (hypervisor steal) and GPU clocks that fell while a row ran.

The per-row contention check in `timing.py` sees only what happens inside this machine:
involuntary context switches and the process's CPU share. On a cloud VM the hypervisor can
give the vCPUs to another guest; the process then *looks* as if it had all its CPU (the guest
kernel does not see the gap) while every step takes longer. Linux counts that time as *steal*:
the 8th number of the `cpu` line of /proc/stat (`man 5 proc`), in jiffies, system-wide.

    with StealWatch() as w:
        ...                         # the timed block
    w.share                         # steal jiffies / all jiffies over the block (None off Linux)

On CUDA the analogue is a GPU that clocks down (heat, power brake) in the middle of a row:
`GpuClocks` reads the SM clock and temperature through NVML (the optional `pynvml` package, as
`torch.cuda.clock_rate` does) at the start and end of a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROC_STAT = Path("/proc/stat")
# A row is contended when more than this share of the machine's CPU time was stolen while it
# was timed. A quiet cloud VM steals 0-1% (measured here: 0.2-0.6%); the slow run saw
# 1-17% in vmstat, and a step that loses s of its CPU runs ~1/(1-s) slower on a saturated
# core set: 5% steal is the least that moves a row as much as the 5% a CI gate checks for.
MAX_STEAL_SHARE = 0.05
# A GPU row is throttled when its SM clock ended below this share of the clock it started at
# (a thermal or power brake mid-row). Not against the board's max clock: under sustained load
# a datacenter GPU runs at its power cap, ~85-90% of the max boost, on every row, which is the
# normal state the row should be measured in.
MIN_CLOCK_SHARE = 0.9


def read_cpu_jiffies(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """(steal, total) jiffies since boot from the `cpu` line, or None where there is none.

    Total is user+nice+system+idle+iowait+irq+softirq+steal; guest and guest_nice are already
    counted in user and nice, so they are left out."""
    try:
        with open(path, encoding="ascii") as f:
            line = f.readline()
    except OSError:
        return None
    parts = line.split()
    if len(parts) < 9 or parts[0] != "cpu":
        return None
    try:
        fields = [int(x) for x in parts[1:9]]
    except ValueError:
        return None
    return fields[7], sum(fields)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Steal over all CPU time between two readings; None when unknown or no tick passed."""
    if before is None or after is None:
        return None
    total = after[1] - before[1]
    if total <= 0:
        return None
    return max(0.0, (after[0] - before[0]) / total)


class StealWatch:
    """`with StealWatch() as w:` ... then `w.share` (None off Linux or for a sub-tick block)."""

    share: float | None = None

    def __enter__(self) -> StealWatch:
        self._j0 = read_cpu_jiffies()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.share = steal_share(self._j0, read_cpu_jiffies())


def describe_steal(share: float | None) -> str:
    return "" if share is None else f"hypervisor steal {share:.1%} of the CPU"


def stolen(share: float | None) -> bool:
    return share is not None and share > MAX_STEAL_SHARE


# --- GPU clocks -------------------------------------------------------------------------------

class GpuClocks:
    """SM clock (MHz) and temperature (°C) of a CUDA device at the start and end of a block,
    through NVML; every field None where pynvml is not installed or NVML cannot be read."""

    def __init__(self, device: Any):
        self.device = device
        self.start: tuple[int, int] | None = None
        self.end: tuple[int, int] | None = None
        self.max_mhz: int | None = None

    def __enter__(self) -> GpuClocks:
        self._handle = _nvml_handle(self.device)
        self.start = _clock_and_temp(self._handle)
        if self._handle is not None:
            try:
                import pynvml

                self.max_mhz = int(pynvml.nvmlDeviceGetMaxClockInfo(self._handle,
                                                                     pynvml.NVML_CLOCK_SM))
            except Exception:  # noqa: BLE001 - optional detail
                self.max_mhz = None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end = _clock_and_temp(self._handle)

    @property
    def throttled(self) -> bool:
        return bool(self.start and self.end and self.start[0] > 0
                    and self.end[0] < MIN_CLOCK_SHARE * self.start[0])

    def fields(self) -> dict[str, Any]:
        if self.start is None or self.end is None:
            return {}
        return {"sm_clock_mhz_start": self.start[0], "sm_clock_mhz_end": self.end[0],
                "sm_clock_mhz_max": self.max_mhz, "gpu_temp_c_start": self.start[1],
                "gpu_temp_c_end": self.end[1]}

    def describe(self) -> str:
        if self.start is None or self.end is None:
            return ""
        return (f"SM clock {self.start[0]} -> {self.end[0]} MHz"
                + (f" (max {self.max_mhz})" if self.max_mhz else "")
                + f", {self.start[1]} -> {self.end[1]} °C")


def _nvml_handle(device: Any):
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        index = torch.cuda._get_nvml_device_index(device)  # honours CUDA_VISIBLE_DEVICES
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - pynvml is optional; no NVML, no clocks
        return None


def _clock_and_temp(handle) -> tuple[int, int] | None:
    if handle is None:
        return None
    try:
        import pynvml

        clock = int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        temp = int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        return clock, temp
    except Exception:  # noqa: BLE001
        return None


# --- one row --------------------------------------------------------------------------------

class RowWatch:
    """Steal (any device) and GPU clocks (CUDA) around a row's timing, then merged into the
    worker's result dict: `steal_share`, the clock fields, and `contended` with the reason
    when the row ran on a stolen CPU or a throttled GPU."""

    def __init__(self, device: Any):
        self.steal = StealWatch()
        self.gpu = GpuClocks(device) if getattr(device, "type", "") == "cuda" else None

    def __enter__(self) -> RowWatch:
        self.steal.__enter__()
        if self.gpu is not None:
            self.gpu.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.gpu is not None:
            self.gpu.__exit__(*exc)
        self.steal.__exit__(*exc)

    def annotate(self, result: dict[str, Any], contention: Any = None) -> dict[str, Any]:
        """`contention`: the kept attempt's timing.Contention on CPU (its steal is the one
        that counts, re-timed attempts excluded); otherwise the whole block's steal."""
        share = getattr(contention, "steal_share", None)
        if share is None:
            share = self.steal.share
        result["steal_share"] = None if share is None else round(share, 4)
        notes = []
        if contention is None and stolen(share):  # CPU rows: timing.Contention flagged it
            notes.append(f"{describe_steal(share)} while this row was timed")
        if self.gpu is not None:
            result.update(self.gpu.fields())
            if self.gpu.throttled:
                notes.append(f"the GPU clocked down while this row was timed "
                             f"({self.gpu.describe()})")
        if notes:
            result["contended"] = True
            result["contention"] = "; ".join(filter(None, [result.get("contention"), *notes]))
            result["reason"] = "; ".join(filter(None, [
                result.get("reason"), "contended: " + "; ".join(notes)
                + ": treat the time as an upper bound"]))
        return result
