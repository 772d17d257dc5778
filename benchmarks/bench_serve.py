"""A loopback load test of `refface serve`: many clients restoring at once, one client sending large photos and
albums, and a prober timing the page throughout.

    python benchmarks/bench_serve.py [--clients 16] [--seconds 60] [--out bench-serve]

The server runs a tiny random ReF-LDM (the model's speed is not what is measured: the server's answers, memory
and correctness are). Each client uploads a photo and a reference, asks for a 2-step restoration, waits for it and
downloads the result; every result must equal the first (same photo, same references, same seed). The large
client uploads photos near the server's pixel limit and album zips, over and over. The prober asks for the page
and /api/info every 0.2 s; the table gives the slowest answer, the 99th percentile, the server's peak memory and
how many restorations, refusals and errors there were. The large photos are blank (a plain colour compresses to a
small file): the server decodes and searches them in full and answers "no face found", which is the work an
attacker's upload costs.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.face.photos import astronaut, place  # noqa: E402
from tests.serving import start_server  # noqa: E402


def _encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, fields: dict[str, str], files: list[tuple[str, str, bytes]] = ()) -> tuple[int, dict]:
        body, kind = _multipart(fields, list(files))
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers={"Content-Type": kind})
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=120) as reply:
            return reply.read()


def restoring_client(url: str, photo: bytes, reference: bytes, stop: float, tally: dict, lock: threading.Lock):
    client = Client(url)
    while time.monotonic() < stop:
        status, found = client.post("/api/photos", {}, [("photo", "photo.jpg", photo)])
        if status != 200:
            with lock:
                tally["errors"].append(found.get("error", status))
            continue
        _, people = client.post("/api/people", {}, [("references", "ref.png", reference)])
        form = {"photo_id": found["photo_id"], "method": "refldm", "steps": "2", "people_id": people["people_id"]}
        status, job = client.post("/api/jobs", form)
        if status == 503:  # the queue is full: a correct answer, the client tries again
            with lock:
                tally["busy"] += 1
            time.sleep(0.5)
            continue
        while True:
            state = json.loads(client.get(f"/api/jobs/{job['job_id']}"))
            if state["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
        if state["state"] != "done":
            with lock:
                tally["errors"].append(state["message"])
            continue
        result = client.get(f"/api/jobs/{job['job_id']}/result.png")
        with lock:
            tally["results"].add(result)
            tally["restored"] += 1


def large_client(url: str, limit_pixels: int, stop: float, tally: dict, lock: threading.Lock) -> None:
    """Photos near the server's pixel limit and album zips of them, over and over (each answered or refused)."""
    client = Client(url)
    side = int(limit_pixels**0.5) - 8
    large = _encode(np.full((side, side, 3), 90, np.uint8))
    album = io.BytesIO()
    with zipfile.ZipFile(album, "w") as archive:
        for number in range(8):
            archive.writestr(f"{number}.png", large)
    while time.monotonic() < stop:
        for kind, files in (("photo", [("photo", "large.png", large)]),
                            ("album", [("album", "album.zip", album.getvalue())])):  # fmt: skip
            started = time.perf_counter()
            status, reply = client.post("/api/photos" if kind == "photo" else "/api/people", {}, files)
            with lock:
                tally["large"][f"{kind} {status}"] = tally["large"].get(f"{kind} {status}", 0) + 1
                tally["large_seconds"].append(time.perf_counter() - started)


def prober(url: str, stop: float, latencies: list[float]) -> None:
    while time.monotonic() < stop:
        for path in ("/", "/api/info"):
            start = time.perf_counter()
            with urllib.request.urlopen(url + path, timeout=30) as reply:
                reply.read()
            latencies.append(time.perf_counter() - start)
        time.sleep(0.2)


def memory_sampler(pid: int, stop: float, peak: list[int]) -> None:
    while time.monotonic() < stop + 5:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            return
        time.sleep(0.25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    from refface import RefLDMPipeline, tiny_architecture

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    import torch

    torch.manual_seed(0)
    RefLDMPipeline.from_architecture(tiny_architecture(32)).save_pretrained(work / "tiny")
    server, url = start_server("--model", str(work / "tiny"), "--device", "cpu", "--max-pending", str(args.clients),
                               env={"TMPDIR": str(work)})  # fmt: skip
    limit = json.loads(urllib.request.urlopen(url + "/api/info").read())["limits"]["max_megapixels"] * 1e6
    photo = _encode(place(astronaut(), 0, 0.6, (200, 200), canvas=(400, 400))[0], "JPEG")
    reference = _encode(astronaut()[::-1].copy())
    tally = {"restored": 0, "busy": 0, "errors": [], "results": set(), "large": {}, "large_seconds": []}
    lock, latencies, peak = threading.Lock(), [], [0]
    stop = time.monotonic() + args.seconds
    threads = [threading.Thread(target=restoring_client, args=(url, photo, reference, stop, tally, lock))
               for _ in range(args.clients)]  # fmt: skip
    threads += [threading.Thread(target=large_client, args=(url, limit, stop, tally, lock)),
                threading.Thread(target=prober, args=(url, stop, latencies)),
                threading.Thread(target=memory_sampler, args=(server.pid, stop, peak))]  # fmt: skip
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    server.terminate()
    server.wait(timeout=60)
    leftovers = [p.name for p in work.iterdir() if p.name.startswith("refface-serve-")]

    latencies.sort()
    print(f"refface serve under load: {args.clients} restoring clients + 1 large-upload client for {elapsed:.0f} s")
    print("| measure | value |\n|---|---|")
    print(f"| page and /api/info answers | {len(latencies)} |")
    print(f"| slowest answer | {latencies[-1]:.3f} s |")
    print(f"| 99th percentile | {latencies[int(0.99 * (len(latencies) - 1))]:.3f} s |")
    print(f"| median | {statistics.median(latencies):.3f} s |")
    print(f"| peak server memory (RSS) | {peak[0] / 2**30:.2f} GB |")
    print(f"| restorations done | {tally['restored']} |")
    print(f"| distinct results (must be 1) | {len(tally['results'])} |")
    print(f"| busy answers (queue full, retried) | {tally['busy']} |")
    print(f"| errors | {len(tally['errors'])} |")
    large = ", ".join(f"{kind}: {count}" for kind, count in sorted(tally["large"].items()))
    print(f"| large uploads (kind and status: count; blank photos, so 400 No face) | {large} |")
    print(f"| slowest large upload | {max(tally['large_seconds']):.1f} s |")
    print(f"| server folders left after SIGTERM | {len(leftovers)} |")
    for error in tally["errors"][:5]:
        print(f"error: {error}")
    correct = len(tally["results"]) == 1 and not tally["errors"] and not leftovers
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
