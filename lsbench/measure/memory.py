"""Peak memory of one step, measured (never estimated).

- CUDA: `torch.cuda.reset_peak_memory_stats` / `max_memory_allocated`, minus the memory already
  allocated when the step starts (parameters, inputs), so the number is what the step adds.
- CPU: a dispatch-mode tracker that sees every tensor storage the step allocates and when it is
  freed (the same idea as torch's `MemTracker`), giving the peak of live tensor bytes the step
  added; plus the process's peak resident set size, which also counts the allocator's slack and
  the interpreter (meaningful in a fresh worker process per config).

    with track_peak(device) as mem:
        loss = model(x).sum(); loss.backward()
    mem.peak_mib, mem.peak_rss_mib

CPU timing and the heap (`retain_freed_memory`, `trim_heap`): glibc returns a large freed block
to the kernel (munmap, or a trim of the heap's top), so the next step's allocation of the same
size takes fresh pages and pays a page fault per 4 KiB on first touch — system time that is
the allocator's, not the attention kernel's (linformer's forward at N = 2048-4096 measured
about 2x slower that way). The worker keeps freed memory in the heap for timing; the memory
pass runs under `fresh_heap` (heap trimmed, glibc's default thresholds) so the step's peak RSS
still counts every page the step touches and nothing that a kept heap adds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 2**20


@dataclass
class PeakMemory:
    peak_mib: float | None = None  # peak tensor memory the step added
    peak_rss_mib: float | None = None  # process peak RSS (CPU only)
    method: str = ""


class LiveTensorBytes(TorchDispatchMode):
    """Counts bytes of tensor storages created while active, and their peak while alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self._refs.pop(key, None)
        self.live -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type != "cpu" or t.is_sparse:
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self._refs:  # a view of a storage already counted
            return
        nbytes = st.nbytes()
        self._refs[key] = weakref.ref(st, lambda _r, k=key, n=nbytes: self._freed(k, n))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # A view (weight.t(), x.view(...)) or an in-place / out= op (AdamW's param.addcdiv_)
        # returns a storage one of its inputs already had: no new memory. Without this check,
        # parameters and optimizer state touched by the step would count as allocated by it.
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_sparse}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _storage_key(t) not in inputs:
                self._track(t)
        return out


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors
        return None


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024


@contextmanager
def track_peak(device: torch.device | str) -> Iterator[PeakMemory]:
    """Measure the peak memory the enclosed step adds on `device`."""
    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.peak_mib = (torch.cuda.max_memory_allocated(device) - base) / MIB
        result.method = "torch.cuda.max_memory_allocated - baseline"
        return
    tracker = LiveTensorBytes()
    with tracker:
        yield result
    result.peak_mib = tracker.peak / MIB
    result.peak_rss_mib = peak_rss_mib()
    result.method = "dispatch-mode tracker of live tensor storages; ru_maxrss"


class RssPeak:
    """Peak resident set size during a block, minus the RSS when it starts.

    Linux: reset the kernel's high-water mark (`echo 5 > /proc/self/clear_refs`) and read
    `VmHWM` afterwards: exact. Elsewhere: sample RSS every millisecond in a thread (can miss
    a very short spike).
    """

    def __init__(self) -> None:
        self.delta_mib: float | None = None
        self.method = ""
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._peak = 0

    def __enter__(self) -> RssPeak:
        self._base = self._proc.memory_info().rss
        if _reset_hwm():
            self.method = "VmHWM after clear_refs reset, minus RSS at start (per step)"
        else:
            self.method = "RSS sampled every 1 ms, minus RSS at start (per step)"
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        if self.method.startswith("VmHWM"):
            peak = _read_hwm()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        if peak is not None:
            self.delta_mib = max(0.0, (peak - self._base) / MIB)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_hwm() is not None
    except OSError:
        return False


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_INT_MAX = 2**31 - 1  # mallopt takes an int: blocks over 2 GiB are still mmapped
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):  # musl, or no libc to load
        return None


def preloaded_allocator() -> str | None:
    """jemalloc / tcmalloc / mimalloc named in LD_PRELOAD (PyTorch's CPU tuning guide)."""
    for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        if any(name in os.path.basename(lib) for name in _PRELOADED):
            return os.path.basename(lib)
    return None


def retain_freed_memory() -> str:
    """Keep freed memory in this process's heap (so timed steps reuse resident pages instead of
    faulting in fresh ones); returns the allocator setting in force, for run.json's env.

    glibc: mallopt(M_MMAP_THRESHOLD, 2 GiB) serves large blocks from the heap instead of mmap,
    mallopt(M_TRIM_THRESHOLD, 2 GiB) stops free() from returning the heap's top to the kernel.
    A preloaded jemalloc/tcmalloc keeps its own caches and is left alone.
    """
    global _SETTING
    preloaded = preloaded_allocator()
    libc = _glibc()
    if preloaded:
        _SETTING = f"{preloaded} (LD_PRELOAD), left as configured"
    elif libc is None:
        _SETTING = f"system allocator ({sys.platform}), freed memory handling not changed"
    elif not _thresholds(libc, _INT_MAX):
        _SETTING = f"{_glibc_name(libc)} malloc defaults (mallopt refused the retention settings)"
    else:
        _SETTING = (f"{_glibc_name(libc)} malloc, freed memory kept in the heap while timing "
                    "(mallopt M_MMAP_THRESHOLD = M_TRIM_THRESHOLD = 2 GiB); the memory pass "
                    "runs with the heap trimmed and large blocks mmapped (128 KiB thresholds)")
    return _SETTING


def _thresholds(libc: ctypes.CDLL, nbytes: int) -> bool:
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(nbytes))
                and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(nbytes)))


_GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (mallopt(3))


@contextmanager
def fresh_heap() -> Iterator[None]:
    """For the memory pass: the retained heap goes back to the kernel and large blocks are
    mmapped (and unmapped when freed) again, so the step's RSS peak counts the pages it
    touches, not a kept heap's fragmentation (measured: a transformer step at N=4096 peaked at
    399 MiB RSS with retention for 261 MiB of tensors, 261 MiB without). Retention, if this
    process had it, is back on afterwards, for timing."""
    libc = _glibc() if preloaded_allocator() is None else None
    retaining = libc is not None and "kept in the heap" in _SETTING
    if retaining:
        _thresholds(libc, _GLIBC_DEFAULT_THRESHOLD)
    trim_heap()
    base = psutil.Process().memory_info().rss
    try:
        yield
    finally:
        if retaining:
            _thresholds(libc, _INT_MAX)
            peak = _read_hwm()  # since the memory pass's clear_refs reset (RssPeak)
            if peak is not None:
                _prefault(libc, peak - base)


def _prefault(libc: ctypes.CDLL, nbytes: int) -> None:
    """Grow the heap by `nbytes` of touched pages and free them into it: the next timed step
    reuses resident pages instead of faulting in the heap the memory pass gave back (a slow
    step's first block is a sample, there is no calibration block to absorb it)."""
    nbytes = min(nbytes, _INT_MAX - 2**20, psutil.virtual_memory().available // 4)
    if nbytes < 2**20:
        return
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    ptr = libc.malloc(ctypes.c_size_t(nbytes))
    if ptr:
        ctypes.memset(ptr, 0, nbytes)
        libc.free(ptr)


def allocator_setting() -> str:
    """What `retain_freed_memory` set in this process (or that nothing was changed)."""
    if _SETTING:
        return _SETTING
    libc = _glibc()
    name = preloaded_allocator() or (_glibc_name(libc) + " malloc" if libc else "system allocator")
    return f"{name} defaults"


_SETTING = ""


def _glibc_name(libc: ctypes.CDLL) -> str:
    return f"glibc {libc.gnu_get_libc_version().decode()}"


def trim_heap() -> None:
    """Give the heap's free pages back to the kernel (glibc malloc_trim), so the next block's
    RSS growth is the pages it touches, not what earlier steps left resident."""
    libc = _glibc() if preloaded_allocator() is None else None
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))
