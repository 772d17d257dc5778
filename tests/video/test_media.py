"""Reading and writing clips with PyAV: the facts of a clip, frames streamed upright, segments joined with the
source's sound unchanged, and one sentence for every file that is not a usable video."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from refface.errors import RefFaceError
from refface.video.encoding import Encoding, SegmentWriter, assemble
from refface.video.media import decode_frames, probe_video
from refface.video.synthetic_clip import decoded_frames, decoded_sound, tone, write_clip
from tests.video.clips import FPS, moving_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return moving_clip(tmp_path_factory.mktemp("clip") / "walk.mp4", frames=20)[0]


def test_probe_reads_the_facts_of_a_clip(clip):
    info = probe_video(clip)
    assert (info.width, info.height, info.frames, info.rate) == (256, 256, 20, Fraction(FPS))
    assert info.duration == pytest.approx(20 / FPS)
    assert info.audio_codecs == ("aac",) and not info.variable_rate and info.rotation == 0


def test_frames_stream_in_order_with_their_timestamps(clip):
    info = probe_video(clip)
    frames = list(decode_frames(info, start=5))
    assert [f.index for f in frames] == list(range(5, 20))
    assert len({f.pts for f in frames}) == 15 and frames == sorted(frames, key=lambda f: f.pts)
    assert np.array_equal(frames[0].pixels, decoded_frames(clip)[5])


@pytest.mark.parametrize("lossless", [False, True])
def test_segments_join_into_one_clip_with_the_sound_unchanged(clip, tmp_path, lossless):
    info = probe_video(clip)
    encoding = Encoding(lossless=lossless)
    segments, writer = [], None
    for frame in decode_frames(info):
        if frame.index % 7 == 0:  # segments of 7, 7 and 6 frames
            if writer is not None:
                segments.append(writer.close())
            writer = SegmentWriter(tmp_path / f"segment-{frame.index}.npz", info, encoding)
        writer.write(frame.pixels, frame.pts)
    segments.append(writer.close())
    target = assemble(segments, info, encoding, tmp_path / f"out{encoding.container_suffix(info)}")
    out = probe_video(target)
    assert (out.frames, out.rate, out.width, out.height) == (20, Fraction(FPS), 256, 256)
    assert out.duration == pytest.approx(info.duration, abs=0.002)
    original, written = decoded_frames(clip), decoded_frames(target)
    differences = [np.abs(a.astype(int) - b).mean() for a, b in zip(original, written, strict=True)]
    if lossless:
        assert max(differences) == 0
        assert target.suffix == ".mkv"
    else:
        assert max(differences) < 6  # H.264 at crf 18 over noisy frames
        assert target.suffix == ".mp4"
        assert np.array_equal(decoded_sound(clip), decoded_sound(target))


def test_rotation_is_kept_and_frames_come_upright(tmp_path):
    rng = np.random.default_rng(0)
    stored = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(3)]
    path = write_clip(stored, tmp_path / "phone.mkv", codec="ffv1", rotation=90)
    info = probe_video(path)
    assert info.rotation == 90 and info.upright_size == (64, 96)
    frames = list(decode_frames(info))
    assert frames[0].pixels.shape == (96, 64, 3)
    assert np.array_equal(frames[0].pixels, np.rot90(stored[0]))
    writer = SegmentWriter(tmp_path / "s.npz", info, Encoding(lossless=True))
    for frame in frames:
        writer.write(frame.pixels, frame.pts)
    out = probe_video(assemble([writer.close()], info, Encoding(lossless=True), tmp_path / "out.mkv"))
    assert out.rotation == 90
    assert np.array_equal(decoded_frames(out.path)[1], stored[1])


def test_a_variable_frame_rate_is_seen_and_kept(tmp_path):
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    path = write_clip(pixels, tmp_path / "vfr.mkv", fps=1000, codec="ffv1", timestamps=[0, 40, 80, 200, 240, 400])
    info = probe_video(path)
    assert info.variable_rate
    assert [f.pts for f in decode_frames(info)] == [0, 40, 80, 200, 240, 400]


def test_odd_sizes_keep_their_size_in_yuv444(tmp_path):
    rng = np.random.default_rng(2)
    pixels = [rng.integers(0, 255, (47, 63, 3), dtype=np.uint8) for _ in range(2)]
    info = probe_video(write_clip(pixels, tmp_path / "odd.mp4"))
    encoding = Encoding()
    assert encoding.pixel_format(info) == "yuv444p"
    assert "63x47" in encoding.notes(info)[0]
    writer = SegmentWriter(tmp_path / "s.npz", info, encoding)
    for frame in decode_frames(info):
        writer.write(frame.pixels, frame.pts)
    out = probe_video(assemble([writer.close()], info, encoding, tmp_path / "out.mp4"))
    assert (out.width, out.height, out.frames) == (63, 47, 2)


def test_files_that_are_not_usable_videos_get_one_sentence(tmp_path, clip):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    import av

    sound_only = tmp_path / "song.m4a"
    with av.open(str(sound_only), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone(0.2)[:, :1024], "fltp", "mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    cases = {
        text: "not a readable video",
        truncated: "not a readable video",
        sound_only: "holds only sound",
        tmp_path / "missing.mp4": "does not exist",
    }
    for path, words in cases.items():
        with pytest.raises(RefFaceError, match=words) as caught:
            probe_video(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message


def test_crf_outside_its_range_is_one_sentence():
    with pytest.raises(RefFaceError, match="--crf must be between 0 and 51"):
        Encoding(crf=60)
