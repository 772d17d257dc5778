"""Time the real-photo workflow: detection + alignment, paste-back, identity embedding, album scans.

Run from the repository root: `python benchmarks/bench_faces.py`. Uses the public-domain photos that
scikit-image and matplotlib ship (install the test extra), placed into scenes of several sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import timed  # noqa: E402
from tests.face.photos import astronaut, place  # noqa: E402
from tests.face.test_album import write_album  # noqa: E402

from refface.face.album import scan_album  # noqa: E402
from refface.face.detection import DlibDetector  # noqa: E402
from refface.face.identity import DlibEmbedder  # noqa: E402
from refface.face.locate import find_faces  # noqa: E402
from refface.face.paste import paste_face  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    detector, embedder = DlibDetector(), DlibEmbedder()
    rows = []
    for width, height in ((640, 560), (1600, 1200), (4000, 3000)):
        scale = width / 640
        scene, _ = place(astronaut(), 8, 1.1 * scale, (width / 2, height / 2), canvas=(width, height))
        seconds = timed(lambda scene=scene: find_faces(scene, detector, "largest"), args.repeats)
        face = find_faces(scene, detector, "largest").faces[0]
        paste = timed(lambda scene=scene, face=face: paste_face(scene, face.image, face), args.repeats)
        rows.append((f"detect + align, {width}x{height} photo", seconds))
        rows.append((f"paste back, {width}x{height} photo", paste))
    crops = [face.image] * 8
    rows.append(("dlib identity embedding, per face", timed(lambda: embedder.embed(crops), args.repeats) / 8))
    with tempfile.TemporaryDirectory() as folder:
        album = write_album(Path(folder) / "album")
        photos = len(list(album.iterdir()))
        cold = timed(lambda: scan_album(album, detector, embedder, Path(folder) / "c", progress=False), 1)
        warm = timed(lambda: scan_album(album, detector, embedder, Path(folder) / "c", progress=False), args.repeats)
        rows.append((f"album scan, first time, per photo ({photos} files, 640x560)", cold / photos))
        rows.append(("album scan, cached, whole album", warm))
    print("| operation | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
