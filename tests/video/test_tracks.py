"""Face tracks: detections joined across frames (overlap and identity), gaps filled, landmarks smoothed without
lag, and the crop jitter of a real face on a known path cut to at most a third."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.data import astronaut

from refface.face.alignment import ffhq_quad
from refface.face.detection import DetectedFace, DlibDetector
from refface.face.identity import euclidean_distances
from refface.face.locate import detect_faces
from refface.video.measures import corner_jitter, flicker
from refface.video.tracks import TrackBuilder, box_overlap, smooth_landmarks
from tests.video.clips import moving_clip


def face_at(x: float, y: float, size: float = 40.0, rng=None) -> DetectedFace:
    """A stand-in detection: 68 points spread over a box, jittered a little."""
    rng = rng or np.random.default_rng(0)
    points = np.stack([np.linspace(x, x + size, 68), np.linspace(y, y + size, 68)], axis=1)
    return DetectedFace((x, y, x + size, y + size), 1.0, points + rng.normal(0, 0.3, points.shape))


def test_box_overlap():
    assert box_overlap((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_overlap((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_overlap((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_two_faces_moving_apart_keep_their_own_tracks_and_a_new_face_starts_one():
    builder = TrackBuilder(max_gap=2)
    for frame in range(10):
        faces = [face_at(10 + 2 * frame, 10), face_at(200 - 2 * frame, 50)]
        if frame >= 6:
            faces.append(face_at(400, 400))
        builder.add(frame, faces[::-1] if frame % 2 else faces)  # the detector's order changes
    tracks = builder.finish(window=5)
    assert [(t.first, t.last) for t in tracks] == [(0, 9), (0, 9), (6, 9)]
    assert tracks[0].boxes[-1][0] == pytest.approx(28) and tracks[1].boxes[-1][0] == pytest.approx(182)


def test_identity_keeps_two_people_apart_where_their_boxes_overlap():
    """Two faces swap places between frames: the boxes alone would join them wrongly, identity does not."""
    builder = TrackBuilder(max_gap=2, identity_limit=0.6, distances=euclidean_distances)
    anna, bert = np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]])
    builder.add(0, [face_at(10, 10), face_at(30, 10)], np.concatenate([anna, bert]))
    builder.add(1, [face_at(12, 10), face_at(28, 10)], np.concatenate([bert, anna]))
    tracks = builder.finish(window=1)
    assert len(tracks) == 2
    assert [t.detected_frames for t in tracks] == [[0, 1], [0, 1]]
    assert np.allclose(tracks[0].identity(), anna[0]) and np.allclose(tracks[1].identity(), bert[0])


def test_a_face_unseen_longer_than_the_gap_starts_a_new_track_and_short_gaps_are_filled():
    builder = TrackBuilder(max_gap=3)
    for frame in (0, 3, 6, 12):  # detection every 3rd frame, then a long gap
        builder.add(frame, [face_at(10 + frame, 10)])
    first, second = builder.finish(window=1)
    assert (first.first, first.last, second.first) == (0, 6, 12)
    # frames 1, 2, 4, 5 lie on the straight line between their detections
    assert first.landmarks(4)[0, 0] == pytest.approx(first.landmarks(3)[0, 0] + 1.0, abs=0.5)
    assert first.raw.shape == (7, 68, 2)


def test_smoothing_keeps_smooth_motion_exactly_and_removes_noise():
    frames = np.arange(40, dtype=np.float64)
    path = 0.05 * frames**2 + 3 * frames  # accelerating: a quadratic fit follows it without lag
    landmarks = np.broadcast_to(path[:, None, None], (40, 68, 2)).copy()
    assert np.allclose(smooth_landmarks(landmarks, 9), landmarks)
    noisy = landmarks + np.random.default_rng(0).normal(0, 1.0, landmarks.shape)
    smoothed = smooth_landmarks(noisy, 9)
    assert np.std(smoothed - landmarks) < 0.6 * np.std(noisy - landmarks)
    assert np.array_equal(smooth_landmarks(noisy[:2], 9), noisy[:2])  # too short to smooth
    assert smooth_landmarks(noisy[:4], 9).shape == (4, 68, 2)


def test_flicker_measures_the_change_between_frames():
    still = [np.full((8, 8, 3), 100, np.uint8)] * 3
    assert flicker(still) == 0.0
    assert flicker([np.zeros((8, 8, 3)), np.full((8, 8, 3), 4.0)]) == 4.0


@pytest.mark.slow
@pytest.mark.parametrize("frames", [48, 72])
def test_smoothed_tracks_cut_the_crop_jitter_on_a_known_path_to_a_third(tmp_path, frames):
    """The astronaut moves along a known smooth path with noise and JPEG damage on every frame; corners of the
    crop from smoothed tracks move with the true motion far more closely than per-frame detections do."""
    from refface.video.media import decode_frames, probe_video

    path, motion = moving_clip(tmp_path / "path.mp4", frames=frames, size=(320, 240), sound=False)
    detector = DlibDetector()
    truth = ffhq_quad(detect_faces(astronaut(), detector)[0].landmarks).corners
    builder = TrackBuilder()
    info = probe_video(path)
    for frame in decode_frames(info):
        builder.add(frame.index, detect_faces(frame.pixels, detector))
    (track, *others) = sorted(builder.finish(window=9), key=lambda t: -t.length)
    # HOG scores of some turned, noisy frames sit near the detector's threshold: a missed frame inside the track
    # is filled, one at its end shortens it
    assert track.first <= 2 and track.last >= frames - 4 and sum(t.length for t in others) <= 3
    true_corners = np.stack([motion.apply(i, truth) for i in track.frames()])
    per_frame = corner_jitter(np.stack([track.quad(i, smoothed=False).corners for i in track.frames()]), true_corners)
    smoothed = corner_jitter(np.stack([track.quad(i).corners for i in track.frames()]), true_corners)
    assert per_frame > 0.3  # the detections do wobble
    assert smoothed <= per_frame / 3
