"""Run by test_embed under torchrun: each process embeds its share of a folder and saves what it saw."""

import sys
from pathlib import Path

import numpy as np
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from refface.data.embed import embed_images  # noqa: E402
from tests.data.test_embed import ColourEmbedder  # noqa: E402

faces, work, out = (Path(arg) for arg in sys.argv[1:4])
accelerator = Accelerator(cpu=True)
embedder = ColourEmbedder()
names = sorted(p.name for p in faces.glob("*.png"))
result = embed_images(names, faces, embedder, work, chunk_size=2, accelerator=accelerator, progress=False)
np.save(out / f"rank{accelerator.process_index}_of_{accelerator.num_processes}.npy", result)
(out / f"rank{accelerator.process_index}.count").write_text(str(embedder.embedded))
