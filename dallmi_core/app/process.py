"""The OS side of the worker process: the single-worker lock, resident memory, giving memory back,
and replacing the interpreter in place. No store, no torch: cheap to import from the app.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

LOCK_FILE = "worker.lock"
LOG_FILE = "worker.log"


# ---- memory ------------------------------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process (VmRSS in /proc); None where there is no /proc (macOS)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def release_memory() -> None:
    """Return what a finished run left behind: collect its cycles, empty the CUDA cache, and give the
    C heap's free pages back to the OS (glibc's malloc_trim; skipped elsewhere)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        pass


# ---- the single-worker lock -------------------------------------------------------------------


def acquire_lock(root: str | os.PathLike, *, wait_s: float = 1.0) -> IO | None:
    """Take the exclusive lock and write our pid into it; None when another process holds it.

    Retries for `wait_s`: an app probing the lock (`worker_running`) holds it for microseconds, and
    a worker starting at that moment must not give up and leave the queue unserved.
    """
    handle = open(Path(root) / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process lifetime
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def worker_running(root: str | os.PathLike) -> bool:
    """True when some process holds the lock of `root` (probed non-blocking, released at once)."""
    path = Path(root) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def worker_pid(root: str | os.PathLike) -> int | None:
    """The pid written by the live worker of `root`, None when there is none."""
    if not worker_running(root):
        return None
    text = (Path(root) / LOCK_FILE).read_text().strip()
    return int(text) if text.isdigit() else None


def inherited_lock(fd: int) -> IO | None:
    """The lock handed over by this worker's previous interpreter (the same open file, still locked)."""
    handle = os.fdopen(fd, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: a no-op that proves it
    except OSError:
        handle.close()
        return None
    os.set_inheritable(fd, False)
    return handle


# ---- a fresh interpreter in place -----------------------------------------------------------------


def exec_fresh(argv: Sequence[str], *, keep_fd: int) -> None:
    """Replace this process's image with `argv` (the same pid), passing `keep_fd` open and this
    package on PYTHONPATH; returns only by raising OSError when the execve failed."""
    env = dict(os.environ)  # the fresh interpreter must import this very package, installed or not
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds dallmi_core
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.set_inheritable(keep_fd, True)
    try:
        os.execve(argv[0], list(argv), env)
    finally:  # only reached when the execve failed
        os.set_inheritable(keep_fd, False)
