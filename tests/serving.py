"""Starting a real `refface serve` process for the tests and the load benchmark: a free port, and waiting until
the page answers (or saying why it did not start)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(*options: str, env: dict | None = None, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """`refface serve OPTIONS` on a free loopback port, once it answers; the process and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "refface.cli", "serve", "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/info", timeout=2).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"refface serve did not start:\n{process.stdout.read()}") from None
            time.sleep(0.3)
