"""Draw docs/workflow.png: what `refface restore PHOTO --refs-dir ALBUM` does to a real photo.

Run from the repository root: `python docs/workflow_figure.py`. The photo is the public-domain
astronaut portrait that scikit-image ships, degraded and placed into a larger scene; references
come from a generated album. The restored crop is produced by a small randomly initialised model
(this build machine cannot download the released weights), so the figure shows the workflow and
the output layout, not restoration quality.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image, ImageDraw
from tests.face.photos import astronaut, degrade, place
from tests.face.test_album import write_album

from refface import RefLDMPipeline, tiny_architecture
from refface.face.detection import DlibDetector
from refface.face.identity import DlibEmbedder
from refface.restoration import PhotoRestorer
from refface.restoration.people import people_from_album
from refface.restoration.report import comparison_image
from refface.restoration.settings import RestoreSettings


def main() -> None:
    import torch

    detector, embedder = DlibDetector(), DlibEmbedder()
    scene = degrade(place(astronaut(), -10, 1.1, (330, 290))[0], 3)
    with tempfile.TemporaryDirectory() as folder:
        album = write_album(Path(folder) / "album")
        people = people_from_album(album, detector, embedder, 4, cache_root=Path(folder), progress=False)
    torch.manual_seed(0)
    pipe = RefLDMPipeline.from_architecture(tiny_architecture()).eval_mode()
    restorer = PhotoRestorer(pipe, people, detector, RestoreSettings.build(steps=4, faces="largest"))
    restoration = restorer.restore(scene)
    face = restoration.faces[0]
    references, result = face.person.references, restoration.photo

    marked = Image.fromarray(scene)
    draw = ImageDraw.Draw(marked)
    corners = [tuple(p) for p in face.aligned.quad.corners]
    draw.polygon(corners, outline=(255, 60, 60), width=3)
    for x, y in face.aligned.face.landmarks:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(60, 255, 60))
    compare = comparison_image(face.crop, face.restored, references)
    height = compare.height
    panels = [marked, Image.fromarray(result), compare]
    panels = [p.resize((round(p.width * height / p.height), height), Image.Resampling.LANCZOS) for p in panels]
    figure = Image.new("RGB", (sum(p.width for p in panels) + 20 * (len(panels) - 1), height), (255, 255, 255))
    x = 0
    for panel in panels:
        figure.paste(panel, (x, 0))
        x += panel.width + 20
    figure = figure.resize((figure.width // 2, figure.height // 2), Image.Resampling.LANCZOS)
    target = Path(__file__).with_name("workflow.png")
    figure.save(target, optimize=True)
    print(f"wrote {target} ({len(references)} references)")


if __name__ == "__main__":
    main()
