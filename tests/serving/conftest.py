"""The served tiny model: ``quark serve`` started once per session on a free loopback port (``served_model``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO, quark_command  # the root tests/conftest.py (this one is serving.conftest)

READY_TIMEOUT_S = 300  # load + compile of the tiny model on a busy two-core CPU machine
SERVE_ARGS = ("--max_slots", "4", "--max_seq_len", "256")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 5.0) -> int | None:
    """The HTTP status of ``GET url``; None when nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def get_json(url: str, timeout: float = 30.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict, timeout: float = 120.0):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _tail(path: str, chars: int = 6000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def wait_until_ready(url: str, process: subprocess.Popen, stderr_path: str, timeout: float = READY_TIMEOUT_S):
    """Polls ``/ready`` until it answers 200; fails with the server's stderr if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"quark serve exited with {process.returncode} before it was ready:\n{_tail(stderr_path)}")
        if http_status(f"{url}/ready") == 200:
            return
        time.sleep(0.5)
    pytest.fail(f"quark serve was not ready after {timeout:.0f} s:\n{_tail(stderr_path)}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server's graceful shutdown), then SIGKILL if it is still there after 20 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def served_model(trained_run, tmp_path_factory):
    """``quark serve`` of the session's tiny model on 127.0.0.1; shared by the serving tests of a worker.

    Returns ``{"url", "model_dir", "log_dir", "process"}``; ``log_dir`` is the server's ``--log_dir``
    (``feedback.jsonl`` lands there) and also holds the server's ``stdout.log`` / ``stderr.log``.
    """
    log_dir = tmp_path_factory.mktemp("serve_logs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stdout_path, stderr_path = str(log_dir / "stdout.log"), str(log_dir / "stderr.log")
    command = quark_command(
        "serve", "--model_dir", trained_run["model_dir"], "--host", "127.0.0.1", "--port", str(port),
        *SERVE_ARGS, "--log_dir", str(log_dir),
    )
    # Output goes to files, not pipes: nobody reads a pipe while the tests run, and a full one blocks the server.
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, env=dict(os.environ))
    try:
        wait_until_ready(url, process, stderr_path)
        yield {"url": url, "model_dir": trained_run["model_dir"], "log_dir": str(log_dir), "process": process}
    finally:
        stop(process)
