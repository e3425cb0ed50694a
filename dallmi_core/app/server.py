"""The app as a local server process, for what drives it from outside (the browser tests, the demo
benchmark): `streamlit run app.py` on a free port of 127.0.0.1 with its data folder and switches in
the environment, the wait until it answers, its stop, and the flags of the headless chromium that
opens it. Nothing here imports streamlit: the server is a child process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)
SERVER_ARGS = ("--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none")


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_env(data_dir: str | os.PathLike, *, demo: bool, worker: bool) -> dict[str, str]:
    """This process's environment for an app on `data_dir`, with the demo project created on the
    first start or not (DALLMI_NO_DEMO), and runs served by a worker the app starts or only queued
    (DALLMI_NO_WORKER)."""
    env = {**os.environ, "DALLMI_DATA_DIR": str(data_dir)}
    for name, on in (("DALLMI_NO_DEMO", demo), ("DALLMI_NO_WORKER", worker)):
        if on:
            env.pop(name, None)
        else:
            env[name] = "1"
    return env


@dataclass
class AppServer:
    """A started `streamlit run app.py`: the process (in its own session), its URL and its log."""

    process: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def start(cls, app_dir: str | os.PathLike, env: dict[str, str], log: str | os.PathLike) -> AppServer:
        """The app.py of `app_dir` served on a free port, its output written to `log`."""
        port = free_port()
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *SERVER_ARGS],
                cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return cls(process, f"http://127.0.0.1:{port}", Path(log))

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_healthy(self, timeout_s: float) -> None:
        """Return once the server answers its health check; a RuntimeError that ends with the log's
        tail when the process exits first or nothing answers within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"streamlit did not answer {self.url}/_stcore/health within {timeout_s:g} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the server's session (streamlit and what it started in it), SIGKILL after
        `timeout_s`. A worker the app started runs in a session of its own and is left running."""
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
