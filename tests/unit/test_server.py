"""The app as a local server process (dallmi_core.app.server): its environment, the health wait, the stop.

A stand-in child process plays the server here; the browser tests (tests/e2e/) start the real one.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from dallmi_core.app.server import AppServer, app_env, free_port


def test_app_env_sets_the_data_folder_and_the_demo_and_worker_switches(monkeypatch, tmp_path):
    monkeypatch.setenv("DALLMI_NO_DEMO", "1")
    monkeypatch.delenv("DALLMI_NO_WORKER", raising=False)
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    on = app_env(tmp_path, demo=True, worker=True)
    assert on["DALLMI_DATA_DIR"] == str(tmp_path) and on["SOMETHING_ELSE"] == "kept"
    assert "DALLMI_NO_DEMO" not in on and "DALLMI_NO_WORKER" not in on
    off = app_env(tmp_path, demo=False, worker=False)
    assert (off["DALLMI_NO_DEMO"], off["DALLMI_NO_WORKER"]) == ("1", "1")


def test_free_port_can_be_bound():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def _child(code: str, log) -> AppServer:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return AppServer(process, f"http://127.0.0.1:{free_port()}", log)


def test_a_server_that_exits_first_is_an_error_with_its_log(tmp_path):
    server = _child("print('no such page'); raise SystemExit(3)", tmp_path / "server.log")
    with pytest.raises(RuntimeError, match=r"streamlit exited with 3:\nno such page"):
        server.wait_healthy(60)


def test_a_server_that_never_answers_times_out(tmp_path):
    server = _child("import time; time.sleep(60)", tmp_path / "server.log")
    try:
        with pytest.raises(RuntimeError, match="did not answer .*/_stcore/health within 1 s"):
            server.wait_healthy(1)
    finally:
        server.stop()
    assert server.process.returncode == -signal.SIGTERM


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    server = _child(code, tmp_path / "server.log")
    deadline = time.monotonic() + 60
    while not server.log.read_text() and time.monotonic() < deadline:  # until the handler is in place
        time.sleep(0.05)
    server.stop(timeout_s=0.5)
    assert server.process.returncode == -signal.SIGKILL
