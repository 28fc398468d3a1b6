"""Start `lsbench run` as a real process and kill -9 it once it has written some rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def run_then_kill(args: list[str], jsonl: Path, rows: int, timeout_s: float,
                  group: bool = True) -> int:
    """Run `lsbench ARGS`; once `jsonl` holds `rows` lines, SIGKILL the parent (and with
    `group`, its workers too). Fails if the run ends first or the rows never come. Returns
    the pid, which is also the process group of whatever the run left behind."""
    cmd = [sys.executable, "-c", "from lsbench.cli import app; app()", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if jsonl.exists() and len(jsonl.read_text().splitlines()) >= rows:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError(f"no {rows} rows in {jsonl} within {timeout_s:g} s")
    finally:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.pid
