"""How long the command line takes before it answers: help and argument errors, each in a fresh process.

    python benchmarks/bench_startup.py [--runs 10]

Each command runs --runs times in a new Python process (as a user's shell starts it); the table gives the
median and the slowest wall time. Help and usage errors build only the arguments of the command asked for and
never import torch, so they answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "refface --help": ["--help"],
    "refface restore --help": ["restore", "--help"],
    "refface restore (no --output: usage error)": ["restore", "photo.jpg"],
    "refface benchmark --help": ["benchmark", "--help"],
}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "refface.cli", *argv], capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    timed(["--help"])  # the first run fills the file cache; it is not counted
    print(f"| command | median s | slowest s |  ({args.runs} runs each, fresh processes)")
    print("|---|---|---|")
    for name, argv in COMMANDS.items():
        times = [timed(argv) for _ in range(args.runs)]
        print(f"| `{name}` | {statistics.median(times):.3f} | {max(times):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
