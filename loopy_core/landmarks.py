"""Facial landmarks for real videos: 68 keypoints per frame -> head, expression and mouth tracks for preprocessing.

The landmark model is dlib's 68-point shape predictor (Kazemi & Sullivan 2014, an ensemble of regression trees),
found by dlib's HOG face detector. Both install from PyPI with their weights inside the packages, so nothing is
downloaded at run time: `pip install "comfyui-loopy[landmarks]"` brings `dlib-bin` (a prebuilt `import dlib`) and
`face_recognition_models` (`shape_predictor_68_face_landmarks.dat`). Neither is a dependency of the package: dlib is
imported when a `FaceLandmarker` is built, and a missing one raises an `ImportError` that names the extra.
Licence: dlib's code is Boost-licensed, but the 68-point model was trained on the iBUG 300-W data set, whose terms
allow non-commercial use only; check them before training a model for commercial use.

Points are `[68, 2]` float32 `(x, y)` pixels in the iBUG 300-W order (0-16 jaw, 17-26 brows, 27-35 nose, 36-41 the
eye on the image's left, 42-47 the eye on the image's right, 48-59 outer lips, 60-67 inner lips). A video's points
are `[T, 68, 2]` with a `[T]` mask of the frames where a face was found.

Tracks (`tracks_from_landmarks`), in the units of `loopy_core.motion` and of the synthetic world's ground truth:
- head `[T, 3]`: `(tx, ty)` = centre of the eyes and nose minus its mean over the video, as fractions of the frame
  width and height; `roll` = angle of the line between the eye centres, radians, clockwise on screen positive;
- expression `[T, 2]`: mouth opening = mean gap between the inner lips / inter-ocular distance (0 closed, about
  0.5 wide open), clipped to 0..1; blink = 1 - eye aspect ratio / the video's open-eye ratio (its 90th
  percentile), clipped to 0..1 (0 open, 1 closed);
- mouth `[T, 4]`: the outer lips' box as centre x, y, half-width, half-height (fractions of the frame), floored at
  0.06 and 0.03 like the synthetic world's.
Frames without landmarks get points interpolated linearly from their neighbours (held at the ends).
*Reconstructed*: the choice of stable points for the centre, the inter-ocular normalisation, the eye aspect ratio
(Soukupova & Cech 2016) against a per-video 90th percentile, and the mouth-box floors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = 'pip install "comfyui-loopy[landmarks]"'
MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
NUM_POINTS = 68
NOSE = slice(27, 36)
EYE_A = slice(36, 42)  # the eye on the image's left (the subject's right)
EYE_B = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_GAPS = ((61, 67), (62, 66), (63, 65))  # upper / lower inner-lip point pairs
MOUTH_FLOOR = (0.06, 0.03)  # minimum half-width, half-height (fractions), as the synthetic world's mouth boxes
OPEN_EYE_PERCENTILE = 90.0
DETECT_MIN_SIDE = 320  # smaller images are searched at 2x: the HOG detector misses faces under ~80 px
TRACK_SIDE = 320  # video frames are resized to this longer side for tracking (*reconstructed*)


def _model_path() -> Path:
    """The 68-point model inside the installed `face_recognition_models` package (found without importing it: its
    `__init__` needs `pkg_resources`, which new setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"facial landmarks need the face_recognition_models package ({INSTALL_HINT})")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{MODEL_FILE} is missing from {str(path.parent)!r}; reinstall "
                                f"face_recognition_models")
    return path


class FaceLandmarker:
    """dlib's HOG face detector and 68-point shape predictor. Building one loads the model (~0.4 s, 100 MB); then
    a frame takes about 0.5 ms for the points and 5-20 ms for detection (CPU, one thread)."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as e:
            raise ImportError(f"facial landmarks need dlib ({INSTALL_HINT}): {e}") from None
        path = _model_path()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))
        self.model_path = path

    @staticmethod
    def _check(image: Any) -> np.ndarray:
        x = np.asarray(image)
        if x.ndim != 3 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise ValueError(f"image must be uint8 RGB [H, W, 3], got {x.dtype} {tuple(x.shape)}")
        return np.ascontiguousarray(x)

    def detect(self, image: Any) -> tuple[int, int, int, int] | None:
        """The most confident face found by dlib's HOG detector as `(x, y, w, h)` pixels, or None. (Not the
        largest: the detector's weak false positives on clothing are often bigger than the face.)"""
        x = self._check(image)
        upsample = 0 if min(x.shape[:2]) >= DETECT_MIN_SIDE else 1
        rects, scores, _ = self._detector.run(x, upsample, 0.0)
        if len(rects) == 0:
            return None
        r = rects[int(np.argmax(scores))]
        return int(r.left()), int(r.top()), int(r.width()), int(r.height())

    def landmarks(self, image: Any, box: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
        """`[68, 2]` float32 `(x, y)` pixels of the face in `box` (`(x, y, w, h)`, e.g. from `detect` or
        `loopy_core.face.detect_face`; None: detect it here), or None when there is no face."""
        x = self._check(image)
        if box is None:
            box = self.detect(x)
            if box is None:
                return None
        bx, by, bw, bh = (float(v) for v in box)
        if not (bw > 0 and bh > 0):
            raise ValueError(f"box must be (x, y, w, h) with positive width and height, got {tuple(box)}")
        rect = self._dlib.rectangle(round(bx), round(by), round(bx + bw), round(by + bh))
        shape = self._predictor(x, rect)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(NUM_POINTS)], dtype=np.float32)


def fill_missing(points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Points of the frames where `found` is False, interpolated linearly in time from the frames around them."""
    points = np.asarray(points, dtype=np.float32)
    found = np.asarray(found, dtype=bool)
    if points.ndim != 3 or points.shape[1:] != (NUM_POINTS, 2) or found.shape != points.shape[:1]:
        raise ValueError(f"points must be [T, {NUM_POINTS}, 2] with a [T] mask, got {points.shape} and {found.shape}")
    if not found.any():
        raise ValueError("no frame has landmarks to interpolate from")
    t = np.arange(len(points))
    flat = points.reshape(len(points), -1)
    filled = np.stack([np.interp(t, t[found], flat[found, j]) for j in range(flat.shape[1])], axis=1)
    return filled.reshape(points.shape).astype(np.float32)


def eye_aspect_ratio(eye: np.ndarray) -> np.ndarray:
    """`[..., 6, 2]` eye contour (corner, two upper, corner, two lower) -> `[...]` height / width."""
    def dist(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(eye[..., a, :] - eye[..., b, :], axis=-1)

    return (dist(1, 5) + dist(2, 4)) / (2.0 * np.maximum(dist(0, 3), 1e-6))


def tracks_from_landmarks(
    points: np.ndarray, found: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[T, 68, 2]` pixel points (+ `[T]` mask) of frames `size = (H, W)` -> head `[T, 3]`, expression `[T, 2]`,
    mouth `[T, 4]`, float32 (definitions in the module docstring)."""
    H, W = size
    # 1. frames without a face: interpolate from their neighbours
    p = fill_missing(points, found).astype(np.float64)
    scale = np.array([W, H], dtype=np.float64)
    # 2. head: centre of the eyes and nose, eye-line roll
    eye_a, eye_b = p[:, EYE_A].mean(1), p[:, EYE_B].mean(1)  # [T, 2]
    centre = np.concatenate([p[:, EYE_A], p[:, EYE_B], p[:, NOSE]], axis=1).mean(1) / scale
    d = eye_b - eye_a
    roll = np.arctan2(d[:, 1], d[:, 0])  # y points down, so a clockwise turn on screen is positive
    head = np.concatenate([centre - centre.mean(0), roll[:, None]], axis=1)
    # 3. expression: inner-lip gap / inter-ocular distance; eye closure against the video's open eyes
    iod = np.maximum(np.linalg.norm(d, axis=1), 1e-6)
    gap = np.mean([np.linalg.norm(p[:, a] - p[:, b], axis=1) for a, b in INNER_GAPS], axis=0)
    mouth_open = np.clip(gap / iod, 0.0, 1.0)
    ear = 0.5 * (eye_aspect_ratio(p[:, EYE_A]) + eye_aspect_ratio(p[:, EYE_B]))
    ear_open = max(float(np.percentile(ear[np.asarray(found, bool)], OPEN_EYE_PERCENTILE)), 1e-6)
    blink = np.clip(1.0 - ear / ear_open, 0.0, 1.0)
    expression = np.stack([mouth_open, blink], axis=1)
    # 4. mouth box from the outer lips
    lips = p[:, OUTER_LIPS] / scale  # [T, 12, 2]
    lo, hi = lips.min(1), lips.max(1)
    half = np.maximum((hi - lo) / 2.0, np.array(MOUTH_FLOOR))
    mouth = np.concatenate([(lo + hi) / 2.0, half], axis=1)
    return head.astype(np.float32), expression.astype(np.float32), mouth.astype(np.float32)


def video_landmarks(
    frames: np.ndarray, landmarker: FaceLandmarker, side: int = TRACK_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of every frame of `[T, H, W, 3]` uint8 frames -> `[T, 68, 2]` pixels of the frames and a `[T]`
    mask of the frames with a face. Each frame is resized so its longer side is `side` (the same detail for every
    video, whatever its resolution, so the landmark noise is on one scale: dlib gives whole pixels, and at 320 px
    the eye aspect ratio jitters by ~2%); the face is found by dlib's HOG detector, else by `loopy_core.face`'s Haar
    cascade."""
    import cv2

    from loopy_core.face import detect_face

    T, H, W, _ = frames.shape
    scale = side / max(H, W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    points = np.zeros((T, NUM_POINTS, 2), np.float32)
    found = np.zeros(T, bool)
    for t in range(T):
        image = cv2.resize(np.ascontiguousarray(frames[t]), size, interpolation=interpolation)
        box = landmarker.detect(image)
        if box is None:
            box = detect_face(image.astype(np.float32) / 255.0)
        if box is None:
            continue
        points[t] = landmarker.landmarks(image, box) / np.array([size[0] / W, size[1] / H], np.float32)
        found[t] = True
    return points, found
