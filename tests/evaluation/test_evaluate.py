"""`refface evaluate`: metrics against reference implementations, identity ranking on real faces, tables, resume."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from refface.cli import main
from refface.errors import RefFaceError
from refface.evaluation.evaluate import evaluate_folders, find_cases
from refface.evaluation.face_region import FaceRegionFinder, face_only
from refface.evaluation.identity_metrics import ArcFaceSimilarity, DlibSimilarity
from refface.evaluation.metrics import PSNR, SSIM
from refface.face.arcface import ArcFaceEmbedder, iresnet
from refface.face.detection import DlibDetector
from refface.face.locate import find_faces
from tests.face.photos import astronaut, grace_hopper, place


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    """FFHQ-aligned 256 px crops: two photos of the astronaut (different pose) and one of Grace Hopper."""
    detector = DlibDetector()

    def aligned(photo: np.ndarray) -> np.ndarray:
        return find_faces(photo, detector, "largest", size=256).faces[0].image

    return {
        "astronaut": aligned(place(astronaut(), 0, 1.0)[0]),
        "astronaut_turned": aligned(place(astronaut(), -10, 0.9, (300, 260))[0]),
        "hopper": aligned(place(grace_hopper(), 5, 0.7)[0]),
    }


def _noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [48, 97, 256])
def test_psnr_and_ssim_equal_scikit_image_on_real_images(size):
    photo = cv2.resize(astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    hopper = cv2.resize(grace_hopper(), (size, size), interpolation=cv2.INTER_AREA)
    preds = [_noisy(photo, 12, 0), cv2.GaussianBlur(photo, (0, 0), 2.0), hopper]
    gts = [photo, photo, photo]
    ours_psnr = PSNR().compute(preds, gts, [None] * 3)
    ours_ssim = SSIM().compute(preds, gts, [None] * 3)
    for pred, gt, p, s in zip(preds, gts, ours_psnr, ours_ssim, strict=True):
        assert p == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=255), abs=1e-9)
        expected = structural_similarity(
            gt, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2
        )
        assert s == pytest.approx(expected, abs=1e-6)
    assert ours_ssim[0] > ours_ssim[2] and ours_psnr[1] > ours_psnr[2]  # the other person is the worst match


@pytest.mark.slow
def test_identity_metrics_rank_the_same_person_above_another(faces):
    same, other = faces["astronaut_turned"], faces["hopper"]
    dlib = DlibSimilarity().compute([same, other], [faces["astronaut"]] * 2, [None, None])
    assert dlib[0] > dlib[1] + 0.05
    # ArcFace with random weights still gives 1 for identical crops and is batch-independent
    torch.manual_seed(0)
    arcface = ArcFaceSimilarity(ArcFaceEmbedder(iresnet("r18")), "ref")
    scores = arcface.compute([same, other], [None, None], [same, faces["astronaut"]])
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert arcface.compute([other], [None], [faces["astronaut"]])[0] == pytest.approx(scores[1], abs=1e-5)


def test_face_region_covers_the_face_and_leaves_the_background(faces):
    gt = faces["astronaut"]
    region = FaceRegionFinder()(gt)
    assert region.found
    size = gt.shape[0]
    assert region.mask[size // 2, size // 2] > 0.95  # the nose
    assert region.mask[:8, :8].max() < 0.05 and region.mask[-8:, :8].max() < 0.05  # the corners
    noise = _noisy(gt, 40, 1)
    blended = face_only(noise, gt, region.mask)
    assert np.array_equal(blended[:8, :8], gt[:8, :8]) and not np.array_equal(blended, gt)


def _write(folder: Path, images: dict[str, np.ndarray], suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        Image.fromarray(image).save(folder / f"{name}{suffix}")
    return folder


def _folders(tmp_path: Path, faces: dict[str, np.ndarray]) -> tuple[Path, Path, Path]:
    gt = _write(tmp_path / "gt", {"a": faces["astronaut"], "b": faces["hopper"], "c": faces["astronaut_turned"]})
    pred = _write(
        tmp_path / "pred",
        {
            "a": _noisy(faces["astronaut"], 10, 2),
            "b": cv2.GaussianBlur(faces["hopper"], (0, 0), 1.5),
            "c": faces["astronaut"],  # a restoration that is the right person in the wrong pose
        },
        suffix=".jpg",
    )
    _write(tmp_path / "refs", {"r_a": faces["astronaut_turned"], "r_b": faces["hopper"]})
    csv_path = tmp_path / "refs.csv"
    lines = ["gt_image,ref_image", "a.png,\"['r_a.png']\"", "b.png,\"['r_b.png']\"", "c.png,\"['r_a.png', 'r_b.png']\""]
    csv_path.write_text("\n".join(lines) + "\n")
    return pred, gt, csv_path


@pytest.mark.slow
def test_offline_evaluation_fills_what_needs_no_download_and_explains_the_rest(tmp_path, faces, monkeypatch):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path / "empty-cache"))
    pred, gt, refs = _folders(tmp_path, faces)
    result = evaluate_folders(
        pred, gt, tmp_path / "out", refs_csv=refs, refs_dir=tmp_path / "refs", download=False, progress=False
    )
    for name in ("psnr", "ssim", "ids_dlib"):
        assert result.summary[name] is not None and np.isfinite(result.summary[name])
    for name in ("ids", "ids_ref", "ids_facenet", "lpips", "flpips"):
        assert result.summary[name] is None and "downloads are off" in result.unavailable[name]
    for name in ("niqe", "musiq", "fid"):
        assert result.summary[name] is None and "pyiqa" in result.unavailable[name]
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").open()))
    assert [r["image"] for r in rows] == ["a.jpg", "b.jpg", "c.jpg"]
    psnr = [float(r["psnr"]) for r in rows]
    assert psnr[2] < psnr[0]  # the wrong pose is far from the GT pixel-wise
    assert np.mean(psnr) == pytest.approx(result.summary["psnr"], abs=1e-3)
    assert np.std(psnr, ddof=1) == pytest.approx(result.spread["psnr"], abs=1e-3) and result.spread["fid"] is None
    assert rows[0]["lpips"] == ""  # unavailable is empty, never 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| images | ids ↑ | ids_ref ↑ | ids_facenet ↑ | ids_dlib ↑ | lpips ↓" in summary and "n/a" in summary
    assert "`niqe`: pyiqa" in summary
    dlib = f"{result.summary['ids_dlib']:.4f} ± {result.spread['ids_dlib']:.4f}"
    assert f"| 3 | n/a | n/a | n/a | {dlib} | n/a" in summary
    header, values = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert header == (
        "images,ids,ids_std,ids_ref,ids_ref_std,ids_facenet,ids_facenet_std,ids_dlib,ids_dlib_std,lpips,lpips_std,"
        "flpips,flpips_std,psnr,psnr_std,ssim,ssim_std,niqe,niqe_std,musiq,musiq_std,fid,fid_std"
    )
    row = dict(zip(header.split(","), values.split(","), strict=True))
    assert float(row["psnr_std"]) == pytest.approx(np.std(psnr, ddof=1), abs=1e-3) and row["ids_std"] == ""


@pytest.mark.slow
def test_arcface_weights_given_as_a_file_fill_ids_and_ids_ref(tmp_path, faces, monkeypatch):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path / "empty-cache"))
    torch.manual_seed(1)
    weights = tmp_path / "r18.pth"
    torch.save(iresnet("r18").state_dict(), weights)
    pred, gt, refs = _folders(tmp_path, faces)
    result = evaluate_folders(
        pred, gt, tmp_path / "out", metrics=["ids", "ids_ref"], refs_csv=refs, refs_dir=tmp_path / "refs",
        download=False, arcface_weights=weights, progress=False,
    )  # fmt: skip
    assert not result.unavailable
    assert result.per_image["c"]["ids"] < 1.0 and -1.0 <= result.summary["ids_ref"] <= 1.0


WEIGHTS_CACHE = os.environ.get("REFFACE_TEST_WEIGHTS")


@pytest.mark.skipif(
    not WEIGHTS_CACHE, reason="set REFFACE_TEST_WEIGHTS to a refface cache with ArcFace and LPIPS weights"
)
def test_with_downloaded_weights_every_weight_metric_is_filled(tmp_path, faces, monkeypatch):
    monkeypatch.setenv("REFFACE_CACHE", WEIGHTS_CACHE)
    pred, gt, refs = _folders(tmp_path, faces)
    result = evaluate_folders(
        pred, gt, tmp_path / "out", metrics=["ids", "ids_ref", "lpips", "flpips"], refs_csv=refs,
        refs_dir=tmp_path / "refs", download=False, progress=False,
    )  # fmt: skip
    assert not result.unavailable
    assert all(result.per_image[name]["ids"] > 0.3 for name in "abc")  # every restoration shows the right person
    assert all(0 <= result.per_image[name]["flpips"] <= result.per_image[name]["lpips"] + 0.05 for name in "abc")


class _Interrupting:
    """A metric that counts its images and raises KeyboardInterrupt on a chosen call."""

    name, higher_is_better, needs_refs = "psnr", True, False

    def __init__(self, interrupt_on: int | None) -> None:
        self.calls, self.images, self.interrupt_on = 0, 0, interrupt_on

    def compute(self, preds, gts, refs):
        self.calls += 1
        if self.calls == self.interrupt_on:
            raise KeyboardInterrupt
        self.images += len(preds)
        return PSNR().compute(preds, gts, refs)


def test_an_interrupted_evaluation_resumes_and_a_changed_image_is_rescored(tmp_path, faces):
    pred, gt, _ = _folders(tmp_path, faces)
    out = tmp_path / "out"
    first = _Interrupting(interrupt_on=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_folders(pred, gt, out, metrics=["psnr"], batch_size=2, progress=False,
                         metric_factory=lambda *a, **k: ([first], {}))  # fmt: skip
    assert first.images == 2 and len((out / "scores.jsonl").read_text().splitlines()) == 2
    second = _Interrupting(interrupt_on=None)
    result = evaluate_folders(pred, gt, out, metrics=["psnr"], batch_size=2, progress=False,
                              metric_factory=lambda *a, **k: ([second], {}))  # fmt: skip
    assert second.images == 1 and set(result.per_image) == {"a", "b", "c"}
    Image.fromarray(faces["hopper"]).save(pred / "a.jpg")  # a new restoration of a: only it is scored again
    third = _Interrupting(interrupt_on=None)
    evaluate_folders(pred, gt, out, metrics=["psnr"], batch_size=2, progress=False,
                     metric_factory=lambda *a, **k: ([third], {}))  # fmt: skip
    assert third.images == 1


def test_bad_folders_and_options_are_one_sentence(tmp_path, faces, capsys):
    pred, gt, refs = _folders(tmp_path, faces)
    (pred / "extra.png").write_bytes((pred / "a.jpg").read_bytes())
    with pytest.raises(RefFaceError, match="1 restoration.* no ground truth .* extra.png"):
        find_cases(pred, gt)
    (pred / "extra.png").unlink()
    (pred / "c.jpg").unlink()
    with pytest.raises(RefFaceError, match="1 ground-truth image.* no restoration .* c.png"):
        find_cases(pred, gt)
    Image.fromarray(faces["astronaut"][:128, :128]).save(pred / "c.jpg")
    with pytest.raises(RefFaceError, match=r"c.jpg is 128x128 but its ground truth .*c.png is 256x256"):
        evaluate_folders(pred, gt, tmp_path / "out", metrics=["psnr"], progress=False)
    with pytest.raises(RefFaceError, match="Unknown metric 'fsim'"):
        evaluate_folders(pred, gt, tmp_path / "out", metrics=["fsim"], progress=False)
    with pytest.raises(RefFaceError, match="r_a.png listed in .* does not exist"):
        find_cases(pred, gt, refs, tmp_path / "nowhere")
    assert main(["evaluate", "--pred", str(tmp_path / "none"), "--gt", str(gt), "-q"]) == 1
    assert capsys.readouterr().err.strip().endswith("does not exist.")
    with pytest.raises(SystemExit):
        main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "psnr,fsim"])


def test_the_cli_prints_the_summary_and_writes_face_masks(tmp_path, faces, capsys, monkeypatch):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path / "empty-cache"))
    pred, gt, _ = _folders(tmp_path, faces)
    code = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "res"),
                 "--metrics", "psnr,ssim,flpips", "--no-download"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| images | flpips ↓ | psnr ↑ | ssim ↑ |" in printed and "`flpips`" in printed
    assert (tmp_path / "res" / "summary.csv").is_file()
    masks = sorted(p.name for p in (tmp_path / "res" / "face_masks").iterdir())
    assert masks == ["a.png", "b.png", "c.png"]  # shown even though LPIPS itself is unavailable offline
