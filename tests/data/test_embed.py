"""Embedding a folder: chunked, resumable, refusing foreign work folders, and the precomputed-input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from accelerate import Accelerator
from PIL import Image

from refface.data.embed import check_images_exist, embed_images, load_embeddings, read_names
from refface.errors import RefFaceError
from tests.distributed import failure, torchrun


class ColourEmbedder:
    """A stand-in identity model: mean colour of four quadrants (deterministic, cheap), counting its calls."""

    name = "colour"
    same_person_distance = 0.1

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, faces):
        self.embedded += len(faces)
        return np.stack([np.concatenate([q.mean(axis=(0, 1)) for q in _quadrants(f)]) for f in faces]) / 255.0

    def distances(self, a, b):
        return np.linalg.norm(a[:, None] - b[None], axis=-1)


def _quadrants(face):
    h, w = face.shape[0] // 2, face.shape[1] // 2
    return [face[:h, :w], face[:h, w:], face[h:, :w], face[h:, w:]]


def write_faces(folder, count, size=32, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_embedding_matches_direct_call_for_any_chunking(tmp_path):
    names = write_faces(tmp_path / "faces", 11)
    direct = ColourEmbedder().embed([np.asarray(Image.open(tmp_path / "faces" / n)) for n in names])
    for chunk, batch in ((3, 2), (4, 4), (100, 5)):
        result = embed_images(names, tmp_path / "faces", ColourEmbedder(), tmp_path / f"work{chunk}", chunk, batch)
        assert result.shape == (11, 12) and result.dtype == np.float32
        np.testing.assert_allclose(result, direct, rtol=1e-6)


def test_interrupted_embedding_resumes_without_redoing_chunks(tmp_path, monkeypatch):
    names = write_faces(tmp_path / "faces", 10)
    work = tmp_path / "work"
    flaky = ColourEmbedder()
    original = flaky.embed

    def fail_on_third_batch(faces):
        if flaky.embedded >= 6:
            raise KeyboardInterrupt
        return original(faces)

    flaky.embed = fail_on_third_batch
    with pytest.raises(KeyboardInterrupt):
        embed_images(names, tmp_path / "faces", flaky, work, chunk_size=3, batch_size=3, progress=False)
    assert sorted(p.name for p in work.glob("chunk_*.npy")) == ["chunk_000000.npy", "chunk_000001.npy"]
    assert not list(work.glob("*.partial"))

    resumed = ColourEmbedder()
    result = embed_images(names, tmp_path / "faces", resumed, work, chunk_size=3, batch_size=3, progress=False)
    assert resumed.embedded == 4  # only the two unfinished chunks (3 + 1 images)
    fresh = embed_images(names, tmp_path / "faces", ColourEmbedder(), tmp_path / "fresh", 3, 3, progress=False)
    np.testing.assert_array_equal(result, fresh)


def test_work_folder_of_another_job_is_refused(tmp_path):
    names = write_faces(tmp_path / "faces", 5)
    embed_images(names, tmp_path / "faces", ColourEmbedder(), tmp_path / "work", 2, progress=False)
    with pytest.raises(RefFaceError, match="belongs to another job"):
        embed_images(names[:4], tmp_path / "faces", ColourEmbedder(), tmp_path / "work", 2, progress=False)


def test_single_process_accelerator_gives_the_same_result(tmp_path):
    names = write_faces(tmp_path / "faces", 7)
    plain = embed_images(names, tmp_path / "faces", ColourEmbedder(), tmp_path / "a", 2, progress=False)
    sharded = embed_images(
        names,
        tmp_path / "faces",
        ColourEmbedder(),
        tmp_path / "b",
        2,
        accelerator=Accelerator(cpu=True),
        progress=False,
    )
    np.testing.assert_array_equal(plain, sharded)


def test_non_square_image_is_refused_with_a_hint(tmp_path):
    (tmp_path / "faces").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "faces" / "wide.png")
    with pytest.raises(RefFaceError, match=r"wide\.png is 40x30.*refface align"):
        embed_images(["wide.png"], tmp_path / "faces", ColourEmbedder(), tmp_path / "work", progress=False)


def test_precomputed_embeddings_are_checked(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "emb.npy", rng.normal(size=(3, 8)))
    (tmp_path / "names.txt").write_text("a.png\nb.png\nc.png\n")
    names, embeddings = load_embeddings(tmp_path / "emb.npy", tmp_path / "names.txt")
    assert names == ["a.png", "b.png", "c.png"] and embeddings.shape == (3, 8)

    (tmp_path / "short.txt").write_text("a.png\nb.png\n")
    with pytest.raises(RefFaceError, match="has 3 rows but the names file .*short.txt lists 2"):
        load_embeddings(tmp_path / "emb.npy", tmp_path / "short.txt")
    np.save(tmp_path / "flat.npy", rng.normal(size=8))
    with pytest.raises(RefFaceError, match=r"flat\.npy holds an array of shape \(8,\)"):
        load_embeddings(tmp_path / "flat.npy", tmp_path / "names.txt")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(RefFaceError, match=r"junk\.npy is not a readable \.npy"):
        load_embeddings(tmp_path / "junk.npy", tmp_path / "names.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(RefFaceError, match="lists no images"):
        read_names(tmp_path / "empty.txt")
    with pytest.raises(RefFaceError, match="does not exist"):
        load_embeddings(tmp_path / "missing.npy", tmp_path / "names.txt")


def test_missing_images_are_named(tmp_path):
    write_faces(tmp_path / "faces", 2)
    check_images_exist(["00000.png", "00001.png"], tmp_path / "faces")
    with pytest.raises(RefFaceError, match=r"2 listed image\(s\) are not in .*: x\.png, y\.png"):
        check_images_exist(["00000.png", "x.png", "y.png"], tmp_path / "faces")
    with pytest.raises(RefFaceError, match="does not exist or is not a folder"):
        check_images_exist(["a.png"], tmp_path / "nowhere")


@pytest.mark.slow
def test_two_processes_share_the_chunks_and_agree(tmp_path):
    """A real two-process job (torchrun, gloo on CPU): chunks alternate between ranks, both get every row."""
    names = write_faces(tmp_path / "faces", 9)
    (tmp_path / "out").mkdir()
    script = Path(__file__).with_name("shard_embedding.py")
    done = torchrun(str(script), str(tmp_path / "faces"), str(tmp_path / "work"), str(tmp_path / "out"))
    assert done.returncode == 0, failure(done)
    counts = [int((tmp_path / "out" / f"rank{r}.count").read_text()) for r in (0, 1)]
    assert counts == [5, 4]  # chunks 0, 2, 4 (2 + 2 + 1 images) and chunks 1, 3
    single = embed_images(names, tmp_path / "faces", ColourEmbedder(), tmp_path / "single", 2, progress=False)
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"rank{rank}_of_2.npy"), single)
