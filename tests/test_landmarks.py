"""Facial landmarks (`loopy_core.landmarks`) and `python -m training.preprocess --keypoints`.

The real face is scikit-image's `astronaut.png` (NASA, public domain), read from the installed wheel's data folder
with PIL; dlib and the photo come with the `test` extra, and the tests that need them skip without them.
"""

from __future__ import annotations

import builtins
import importlib.util
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from loopy_core.landmarks import NUM_POINTS, fill_missing, tracks_from_landmarks

STABLE = [*range(27, 48)]  # nose and eyes: the head centre's points
SHIFT_PX = (24.0, -12.0)  # the shifted copy: right and up
ROLL_DEG = 10.0
VIDEO_SWAY_PX, VIDEO_ROLL_DEG, VIDEO_PERIOD = 8.0, 6.0, 16  # the test video's known head motion
VIDEO_FRAMES, VIDEO_SIDE = 32, 256


def astronaut() -> np.ndarray:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs scikit-image (its astronaut.png is the real face photo): pip install -e '.[test]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"
    if not path.is_file():
        pytest.skip(f"no {path}")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def landmarker():
    from loopy_core.landmarks import FaceLandmarker

    try:
        return FaceLandmarker()
    except ImportError as e:
        pytest.skip(str(e))


def warp(image: np.ndarray, roll_deg: float = 0.0, shift=(0.0, 0.0), centre=None) -> np.ndarray:
    """`image` turned clockwise on screen by `roll_deg` about `centre`, then moved by `shift` pixels."""
    h, w = image.shape[:2]
    centre = (w / 2, h / 2) if centre is None else centre
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -roll_deg, 1.0)  # cv2: + is anticlockwise
    m[:, 2] += shift
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# ---- tracks from points (no dlib needed)


def face_points(open_mouth: float = 0.0, closed_eyes: float = 0.0, dx: float = 0.0) -> np.ndarray:
    """A schematic 68-point face in a 100x100 frame: eyes 40 px apart, inner lips `open_mouth` x 40 px apart."""
    p = np.zeros((NUM_POINTS, 2), np.float32)
    p[27:36] = [[50, 40 + i * 3] for i in range(9)]  # nose
    for first, cx in ((36, 30.0), (42, 70.0)):  # eye contour: corner, two upper, corner, two lower
        h = 3.0 * (1.0 - closed_eyes)
        p[first : first + 6] = [[cx - 6, 35], [cx - 2, 35 - h], [cx + 2, 35 - h], [cx + 6, 35], [cx + 2, 35 + h],
                                [cx - 2, 35 + h]]
    p[48:60] = [[40 + 20 * (1 + np.cos(a)) / 2, 70 + 8 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 12, False)]
    p[60:68] = [[x, 70] for x in (42, 46, 50, 54, 58, 54, 50, 46)]  # corner, upper three, corner, lower three
    gap = 40.0 * open_mouth
    p[[61, 62, 63], 1] = 70 - gap / 2
    p[[67, 66, 65], 1] = 70 + gap / 2
    p[:, 0] += dx
    return p


def test_tracks_from_schematic_points():
    points = np.stack([face_points(), face_points(0.5, dx=10), face_points(dx=99), face_points(0.25, 1.0, dx=-10)])
    found = np.array([True, True, False, True])  # frame 2 is lost: interpolated between 1 and 3
    head, expression, mouth = tracks_from_landmarks(points, found, (100, 100))
    assert head.shape == (4, 3) and expression.shape == (4, 2) and mouth.shape == (4, 4)
    np.testing.assert_allclose(head[:, 0], np.array([0, 10, 0, -10]) / 100, atol=1e-6)
    np.testing.assert_allclose(head[:, 1:], 0, atol=1e-6)  # level eyes: no roll
    np.testing.assert_allclose(expression[:, 0], [0, 0.5, 0.375, 0.25], atol=1e-6)  # gap / 40 px eye distance
    assert expression[0, 1] == 0 and expression[3, 1] == 1  # open eyes, closed eyes
    np.testing.assert_allclose(mouth[0], [0.5, 0.7, 0.1, 0.08], atol=1e-6)  # the outer lips' box
    np.testing.assert_allclose(fill_missing(points, found)[2], (points[1] + points[3]) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="no frame has landmarks"):
        fill_missing(points, np.zeros(4, bool))


# ---- dlib on a real photo


def test_68_points_on_a_real_face(landmarker):
    from loopy_core.face import detect_face

    image = astronaut()
    box = detect_face(image.astype(np.float32) / 255.0)  # the Haar box, as preprocessing has it
    assert box is not None
    points = landmarker.landmarks(image, box)
    assert points.shape == (68, 2) and points.dtype == np.float32
    x, y, w, h = box
    pad = 0.25 * max(w, h)  # dlib's points reach a little past a detector's box (chin, jaw)
    assert (points[:, 0] > x - pad).all() and (points[:, 0] < x + w + pad).all()
    assert (points[:, 1] > y - pad).all() and (points[:, 1] < y + h + pad).all()
    eye_a, eye_b = points[36:42].mean(0), points[42:48].mean(0)
    assert eye_a[0] < eye_b[0] and max(eye_a[1], eye_b[1]) < points[33, 1] < points[48:60, 1].min()
    assert 0.3 * w < eye_b[0] - eye_a[0] < 0.6 * w
    own = landmarker.landmarks(image)  # dlib's own detector: the same face
    assert np.abs(own - points).mean() < 2.0
    assert landmarker.landmarks(np.full((200, 200, 3), 128, np.uint8)) is None
    with pytest.raises(ValueError, match="uint8 RGB"):
        landmarker.landmarks(image.astype(np.float32))


def test_rotated_and_shifted_copies(landmarker):
    image = astronaut()
    base = landmarker.landmarks(image)
    centre = base[STABLE].mean(0)
    copies = [warp(image, ROLL_DEG, centre=centre), warp(image, -ROLL_DEG, centre=centre), warp(image, shift=SHIFT_PX)]
    points = np.stack([base] + [landmarker.landmarks(c) for c in copies])
    head, _, _ = tracks_from_landmarks(points, np.ones(4, bool), image.shape[:2])
    roll = np.degrees(head[:, 2] - head[0, 2])
    assert abs(roll[1] - ROLL_DEG) < 2.0 and abs(roll[2] + ROLL_DEG) < 2.0, roll
    moved = (head[3, :2] - head[0, :2]) * np.array([image.shape[1], image.shape[0]])  # back to pixels
    np.testing.assert_allclose(moved, SHIFT_PX, atol=1.5)


# ---- preprocessing


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory):
    import torch

    from loopy_core.audio import tiny_wav2vec2
    from loopy_core.checkpoint import save_checkpoint
    from loopy_core.config import LoopyConfig
    from loopy_core.models import LoopyModel

    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    path = tmp_path_factory.mktemp("landmarks") / "init.safetensors"
    return save_checkpoint(LoopyModel(cfg), path, audio_encoder=tiny_wav2vec2(cfg.audio))


def write_video(path: Path, frames: np.ndarray) -> None:
    from loopy_core.video import VideoWriter

    t = np.arange(int(len(frames) / 25 * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 160 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    with VideoWriter(path, fps=25, audio=wave, sample_rate=16000) as w:
        w.write(frames)


def test_preprocess_measures_the_known_head_motion(landmarker, init_checkpoint, tmp_path):
    from training.preprocess import detect_face_box, square_crop
    from training.preprocess import main as preprocess

    image = cv2.resize(astronaut(), (VIDEO_SIDE, VIDEO_SIDE), interpolation=cv2.INTER_AREA)
    centre = landmarker.landmarks(image)[STABLE].mean(0)
    phase = 2 * np.pi * np.arange(VIDEO_FRAMES) / VIDEO_PERIOD
    sway, roll = VIDEO_SWAY_PX * np.sin(phase), VIDEO_ROLL_DEG * np.sin(phase + 1.0)
    frames = np.stack([warp(image, r, (s, 0.0), centre) for s, r in zip(sway, roll)])
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "astronaut.mp4", frames)
    out = tmp_path / "shards"
    assert preprocess(["--videos", str(videos), "--out", str(out), "--model", str(init_checkpoint),
                       "--keypoints", "landmarks"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["keypoints"] == "landmarks" and not index["skipped"]
    (video,) = index["videos"]
    assert video["keypoints"] == "landmarks" and video["num_frames"] == VIDEO_FRAMES
    with safe_open(str(out / video["shard"]), framework="pt") as f:
        assert f.metadata()["keypoints"] == "landmarks"
        head, mouth = f.get_tensor("head").numpy(), f.get_tensor("mouth").numpy()
    _, (_, _, side) = square_crop(frames, detect_face_box(frames), 1.8)  # the crop preprocessing used
    expected_tx = (sway - sway.mean()) / side
    assert np.abs(head[:, 0] - expected_tx).max() < 1.5 / side  # within 1.5 px of the known sway
    assert np.abs(head[:, 1]).max() < 1.5 / side
    assert np.abs(np.degrees(head[:, 2] - head[:, 2].mean()) - (roll - roll.mean())).max() < 2.0
    assert (np.abs(mouth[:, 0] - 0.5) < 0.15).all() and (mouth[:, 1] > 0.55).all() and (mouth[:, 1] < 0.85).all()


def test_too_few_landmarks_skip_in_landmarks_mode_and_fall_back_in_auto(landmarker, caplog):
    from training.preprocess import SkipVideo, real_video_motion

    noise = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(SkipVideo, match="landmarks found in 0 of 6 frames"):
        real_video_motion(noise, landmarker, True, "noise.mp4")
    with caplog.at_level(logging.WARNING, logger="training.preprocess"):
        head, expression, mouth, source = real_video_motion(noise, landmarker, False, "noise.mp4")
    assert source == "pixels" and head.shape == (6, 3) and expression.shape == (6, 2) and mouth.shape == (6, 4)
    assert "noise.mp4" in caplog.text and "pixel proxies" in caplog.text


def test_missing_dlib_names_the_extra(monkeypatch, tmp_path, capsys, caplog):
    from loopy_core.landmarks import INSTALL_HINT, FaceLandmarker
    from training.preprocess import main as preprocess
    from training.preprocess import make_landmarker

    real_import = builtins.__import__

    def no_dlib(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dlib)
    assert INSTALL_HINT == 'pip install "comfyui-loopy[landmarks]"'
    with pytest.raises(ImportError, match=r"comfyui-loopy\[landmarks\]"):
        FaceLandmarker()
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    argv = ["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--model", "never_loaded"]
    assert preprocess(argv + ["--keypoints", "landmarks"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="training.preprocess"):
        assert make_landmarker("auto") is None
    assert INSTALL_HINT in caplog.text and "pixel proxies" in caplog.text
    assert make_landmarker("pixels") is None
