"""Real multi-process jobs for the tests: torchrun on the CPU (gloo), each job on its own free port."""

from __future__ import annotations

import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*arguments: str, processes: int = 2, timeout: int = 300, env: dict | None = None):
    """`python -m torch.distributed.run` with `processes` local processes on a free port (not the default 29500,
    which another job on the machine may hold); the finished process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), *arguments]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def failure(done) -> str:
    """What to show when a job failed: the start of its error output (the child's traceback) and its end."""
    text = done.stderr
    return text if len(text) <= 6000 else text[:3000] + "\n...\n" + text[-3000:]
