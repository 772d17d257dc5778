"""Video through the workflow, with a tiny model: a restored clip keeps its frames, timing and sound; a still
clip gives the same face on every frame from the shared noise; an interrupted run resumes into the very same
file; a person is matched once per track; and every bad clip gets its sentence."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

from refface.cli import main
from refface.errors import RefFaceError
from refface.face.detection import DlibDetector
from refface.face.paste import face_mask
from refface.restoration import PhotoRestorer
from refface.restoration.people import people_from_references
from refface.restoration.settings import RestoreSettings
from refface.restoration.video_restorer import VideoRestorer, aligned_from_track
from refface.video.encoding import Encoding
from refface.video.media import decode_frames, probe_video
from refface.video.options import VideoOptions
from refface.video.synthetic_clip import decoded_frames, decoded_sound, render_frames, smooth_path, write_clip
from tests.conftest import make_tiny_pipeline
from tests.video.clips import faceless_clip, moving_clip, still_clip

LOSSLESS = Encoding(lossless=True)


@pytest.fixture(scope="module")
def detector():
    return DlibDetector()


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(seed=3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "moving": moving_clip(root / "walk.mp4")[0],
        "short": moving_clip(root / "short.mp4", frames=14)[0],
        "still": still_clip(root / "still.mkv", frames=10),
    }


def restorer(pipe, detector, people=None, **settings) -> PhotoRestorer:
    return PhotoRestorer(pipe, people, detector, RestoreSettings.build(steps=2, seed=11, batch_size=3, **settings))


def face_masks(path, tracks, size: int = 512) -> list[np.ndarray]:
    """How much of each pixel of each frame the pasted faces cover."""
    info = probe_video(path)
    masks = []
    for frame in decode_frames(info):
        mask = np.zeros(frame.pixels.shape[:2], np.float32)
        for track in tracks:
            if track.covers(frame.index):
                aligned = aligned_from_track(frame.pixels, track, frame.index, size)
                mask = np.maximum(mask, face_mask(aligned, frame.pixels.shape[:2]))
        masks.append(mask)
    return masks


@pytest.mark.slow
def test_a_restored_clip_keeps_its_frames_timing_and_sound_and_changes_only_the_face(pipe, detector, clips, tmp_path):
    source = clips["moving"]
    videos = VideoRestorer(restorer(pipe, detector), VideoOptions(segment_frames=10))
    result = videos.restore(source, tmp_path / "restored_videos" / "walk")
    assert result.output == tmp_path / "restored_videos" / "walk.mp4" and result.output.is_file()
    assert not (tmp_path / "restored_videos" / ".walk.work").exists()  # the resumable state is gone
    before, after = probe_video(source), probe_video(result.output)
    assert (after.frames, after.rate, after.width, after.height) == (24, before.rate, 256, 256)
    assert after.duration == pytest.approx(before.duration, abs=1e-3)
    assert np.array_equal(decoded_sound(source), decoded_sound(result.output))
    (track,) = [t.track for t in result.tracks]
    assert track.first <= 1 and track.last >= 21  # a frame at either end may fall under the detector's threshold
    masks = face_masks(source, [track])
    far, face = [], []
    for original, restored, mask in zip(decoded_frames(source), decoded_frames(result.output), masks, strict=True):
        change = np.abs(original.astype(np.float32) - restored).mean(axis=-1)
        far.append(change[mask == 0].mean())
        if (mask > 0.9).any():  # frames of the track
            face.append(change[mask > 0.9].mean())
    assert len(face) >= 21
    assert max(far) < 5  # only the codec's error away from the face
    assert min(face) > 3 * max(far)  # the face itself was restored


@pytest.mark.slow
def test_a_still_clip_gives_the_same_face_on_every_frame_from_the_shared_noise(pipe, detector, clips, tmp_path):
    options = VideoOptions(encoding=LOSSLESS, segment_frames=4, detect_every=3)  # tracks fill frames between
    shared = VideoRestorer(restorer(pipe, detector), options)
    frames = decoded_frames(shared.restore(clips["still"], tmp_path / "shared").output)
    assert len(frames) == 10
    assert all(np.array_equal(frames[0], frame) for frame in frames[1:])
    assert not np.array_equal(frames[0], decoded_frames(clips["still"])[0])
    own = VideoRestorer(restorer(pipe, detector), VideoOptions(encoding=LOSSLESS, segment_frames=4, frame_seeds=True))
    varied = decoded_frames(own.restore(clips["still"], tmp_path / "own").output)
    assert not np.array_equal(varied[0], varied[1])  # other noise: another face on every frame


class Interrupting:
    """A pipeline that stops the run (as Ctrl-C would) at its `stop_at`-th call."""

    def __init__(self, pipe, stop_at: int):
        self.pipe, self.calls, self.stop_at = pipe, 0, stop_at

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, *args, **options):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.pipe(*args, **options)


@pytest.mark.slow
@pytest.mark.parametrize("temporal_smoothing", [1.0])
def test_an_interrupted_run_resumes_into_the_same_file(pipe, detector, clips, tmp_path, temporal_smoothing):
    options = VideoOptions(encoding=LOSSLESS, segment_frames=4, temporal_smoothing=temporal_smoothing)
    clip = clips["short"]
    whole = VideoRestorer(restorer(pipe, detector), options).restore(clip, tmp_path / "whole" / "walk")
    interrupting = Interrupting(pipe, stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        VideoRestorer(restorer(interrupting, detector), options).restore(clip, tmp_path / "cut" / "walk")
    assert not (tmp_path / "cut" / "walk.mkv").exists()
    work = tmp_path / "cut" / ".walk.work"
    assert [p.name for p in sorted(work.glob("segment-*.npz"))] == ["segment-00000.npz", "segment-00001.npz"]
    counting = Interrupting(pipe, stop_at=0)
    resumed = VideoRestorer(restorer(counting, detector), options).restore(clip, tmp_path / "cut" / "walk")
    assert resumed.resumed_frames == 8 and any("resumed after 8 frame(s)" in note for note in resumed.notes)
    assert counting.calls == 3  # frames 6 to 13 in groups of 3 (from 6, which frame 8's blend reaches back to)
    assert resumed.output.read_bytes() == whole.output.read_bytes()


@pytest.mark.slow
def test_temporal_smoothing_reduces_flicker_on_a_noisy_still_clip(pipe, detector, tmp_path):
    from refface.video.measures import face_region, flicker

    clip = still_clip(tmp_path / "noisy.mkv", frames=8, noise=8.0)
    crops = {}
    for sigma in (0.0, 2.0):
        kept = []
        videos = VideoRestorer(
            restorer(pipe, detector), VideoOptions(encoding=LOSSLESS, temporal_smoothing=sigma, frame_seeds=True)
        )
        result = videos.restore(clip, tmp_path / f"s{sigma}")
        (track,) = [t.track for t in result.tracks]
        for frame in decode_frames(probe_video(result.output)):
            kept.append(aligned_from_track(frame.pixels, track, frame.index, 256).image)
        crops[sigma] = flicker(kept, face_region(256))
    assert crops[2.0] < 0.7 * crops[0.0]


@pytest.mark.slow
def test_each_track_is_matched_to_its_person_once(pipe, detector, clips, tmp_path, people_workspace):
    from refface.face.identity import DlibEmbedder

    album = people_workspace / "astro_album"
    embedder = DlibEmbedder(shape_predictor=detector.shape_predictor)
    people = people_from_references(sorted(album.glob("astro_*.jpg"))[:3], detector, embedder, name="Eileen")
    result = VideoRestorer(restorer(pipe, detector, people)).restore(clips["moving"], tmp_path / "walk")
    (track,) = result.tracks
    assert track.face.person_name == "Eileen" and track.face.status == "restored"
    assert track.face.distance < 0.6
    assert track.face.restored is not None and track.face.restored.shape[2] == 3


def test_a_variable_rate_clip_keeps_every_timestamp_and_an_odd_one_frame_clip_works(pipe, detector, tmp_path):
    motion = smooth_path(5, (256, 256), 512, still=True)
    pixels = render_frames(astronaut(), motion, (256, 256), noise=0.0, jpeg_quality=100)
    stamps = [0, 40, 90, 200, 230]
    vfr = write_clip(pixels, tmp_path / "vfr.mkv", fps=1000, codec="ffv1", timestamps=stamps)
    videos = VideoRestorer(restorer(pipe, detector), VideoOptions(encoding=LOSSLESS))
    result = videos.restore(vfr, tmp_path / "out" / "vfr")
    assert any("variable frame rate" in note for note in result.notes)
    assert [f.pts for f in decode_frames(probe_video(result.output))] == stamps

    odd = write_clip([pixels[0][:255, :253]], tmp_path / "one.mp4")
    result = VideoRestorer(restorer(pipe, detector)).restore(odd, tmp_path / "out" / "one")
    notes = " ".join(result.notes)
    assert "single frame" in notes and "253x255" in notes
    out = probe_video(result.output)
    assert (out.frames, out.width, out.height) == (1, 253, 255)


# ------------------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    pipe.save_pretrained(folder)
    return folder


def restore_command(model, output, *inputs, refs=("--no-refs",), extra=()):
    return ["restore", *map(str, inputs), *refs, "--model", str(model), "--steps", "2", "--output", str(output),
            "--batch-size", "3", "-q", *extra]  # fmt: skip


@pytest.mark.slow
def test_cli_restores_a_clip_with_a_report_row_per_track(tiny_model, clips, tmp_path, people_workspace, capsys):
    refs = sorted((people_workspace / "astro_album").glob("astro_*.jpg"))[:3]
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(clips["moving"], folder / "walk.mp4")
    Image.fromarray(astronaut()).save(folder / "portrait.jpg")
    out = tmp_path / "out"
    assert main(restore_command(tiny_model, out, folder, refs=("--ref", *map(str, refs)), extra=["--crf", "20"])) == 0
    rows = list(csv.DictReader((out / "report.csv").open()))
    by_photo = {row["photo"]: row for row in rows}
    assert set(by_photo) == {"walk", "portrait"}
    walk = by_photo["walk"]
    assert walk["face"] == "0" and walk["status"] == "restored" and walk["references"]
    assert re.search(r"frames [01]-2[1-3]", walk["message"]) and "restored_videos/walk.mp4" in walk["message"]
    assert (out / walk["output"]).is_file() and (out / "cropped_faces" / "walk_00.png").is_file()
    assert probe_video(out / "restored_videos" / "walk.mp4").frames == 24
    assert json.loads((out / "manifest.json").read_text())["settings"]["video"]["encoding"]["crf"] == 20


@pytest.mark.slow
def test_cli_bad_clips_each_get_one_sentence_and_nothing_is_lost(tiny_model, clips, tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    code = main(restore_command(tiny_model, tmp_path / "o1", text))
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1 and "not a readable video" in error[0] and str(text) in error[0]

    faceless = faceless_clip(tmp_path / "sky.mp4")
    assert main(restore_command(tiny_model, tmp_path / "o2", faceless)) == 0
    copied = tmp_path / "o2" / "restored_videos" / "sky.mp4"
    assert copied.read_bytes() == faceless.read_bytes()
    assert "copied unchanged" in capsys.readouterr().out + (tmp_path / "o2" / "report.csv").read_text()

    out = tmp_path / "o3"
    assert main(restore_command(tiny_model, out, clips["still"])) == 0
    first = (out / "restored_videos" / "still.mp4").read_bytes()
    (out / "manifest.json").unlink()  # an earlier run's output, not a run to resume
    capsys.readouterr()
    assert main(restore_command(tiny_model, out, clips["still"])) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "restored_videos" / "still.mp4").read_bytes() == first  # untouched

    with pytest.raises(RefFaceError, match="--temporal-smoothing must be 0 or more"):
        VideoOptions(temporal_smoothing=-1)
    assert main(restore_command(tiny_model, tmp_path / "o4", clips["still"], extra=["--aligned"])) == 1
    assert "is a video; leave --aligned out" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_an_interrupted_clip_is_finished_by_the_same_command(tiny_model, clips, tmp_path, monkeypatch, capsys):
    from refface.pipelines.refldm import RefLDMPipeline

    calls = {"count": 0}
    original = RefLDMPipeline.__call__

    def interrupted(self, *args, **options):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **options)

    monkeypatch.setattr(RefLDMPipeline, "__call__", interrupted)
    out = tmp_path / "out"
    command = restore_command(tiny_model, out, clips["short"], extra=["--lossless"])
    assert main(command) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "restored_videos" / "short.mkv").exists()
    assert (out / ".video-work" / "short" / "tracks.npz").is_file()  # the faces found are kept
    assert main(command) == 0
    assert probe_video(out / "restored_videos" / "short.mkv").frames == 14
    assert not (out / ".video-work" / "short").exists()
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [(row["photo"], row["face"], row["status"]) for row in rows] == [
        ("short", "0", "restored-without-references")
    ]


def test_an_earlier_result_blocks_only_its_own_clip(tmp_path):
    from refface.restoration.archive import prepare_archive
    from refface.restoration.archive_inputs import ArchivePhoto

    clip = tmp_path / "walk.mp4"
    clip.write_bytes(b"")
    out = tmp_path / "out" / "restored_videos"
    out.mkdir(parents=True)
    (out / "walk.v2.mp4").write_bytes(b"another clip's result")
    assert prepare_archive(tmp_path / "out", [ArchivePhoto(clip, "walk")], {}, overwrite=False).resuming is False
    (out / "walk.mkv").write_bytes(b"this clip's lossless result")
    with pytest.raises(RefFaceError, match=r"walk\.mkv already exists; pass --overwrite"):
        prepare_archive(tmp_path / "out", [ArchivePhoto(clip, "walk")], {}, overwrite=False)
    with pytest.raises(RefFaceError, match="is also an input"):
        prepare_archive(tmp_path, [ArchivePhoto(clip, "../walk")], {}, overwrite=True)


@pytest.mark.slow
def test_an_enlarged_clip_is_written_at_twice_its_size_with_the_resized_frames_around_the_face(
    pipe, detector, clips, tmp_path
):
    from refface.photo.background import resize
    from refface.photo.options import PhotoOutput

    source = clips["moving"]
    enlarged = restorer(pipe, detector, photo=PhotoOutput(scale=2, background="lanczos"))
    result = VideoRestorer(enlarged, VideoOptions(segment_frames=10)).restore(source, tmp_path / "walk")
    after = probe_video(result.output)
    assert (after.frames, after.width, after.height) == (24, 512, 512)
    (track,) = [t.track for t in result.tracks]
    masks = face_masks(source, [track])
    for original, restored, mask in zip(decoded_frames(source), decoded_frames(result.output), masks, strict=True):
        away = resize(mask, (512, 512)) == 0
        change = np.abs(resize(original, (512, 512)).astype(np.float32) - restored).mean(axis=-1)
        assert change[away].mean() < 5  # the codec's error only
