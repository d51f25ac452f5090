"""`loopy eval-suite`: the paper's real-data protocol (Table 1/2 metrics) with one fixed pipeline for every method.

Generated videos (`pred`) and the ground truth (`truth`) are two folders of videos matched by file stem. Every video,
of either folder and of any method, goes through the same steps, so the numbers compare across models:
1. decode with PyAV (`loopy_core.video.read_video`), resample to 25 fps (nearest frame), keep the split's frame range;
2. one steady face crop per video: the median of OpenCV's face boxes over 12 sampled frames
   (`loopy_core.face.detect_face_box`), a square of `CROP_MARGIN` x the face side (`crop_box`; the centre square if
   no face is found), resized to 224 x 224 (bilinear, antialiased);
3. the metrics below on the crops. The audio is the pred video's own track (the truth's when it has none).

Metrics (units and direction in the report):
- Sync-C / Sync-D: SyncNet (`syncnet.py`), offset search over +-15 frames; mean over videos.
- FID: Inception-v3 (`inception.py`) pool features of every frame (or every `frame_stride`-th), pred frames against
  truth frames pooled over the whole set; through torchmetrics' `FrechetInceptionDistance` when it is installed (the
  `[eval]` extra), else `fvd.frechet_distance` on the same features.
- FVD: I3D (`fvd.py`) logits of non-overlapping 16-frame clips, pred clips against truth clips over the whole set.
- E-FID: the Frechet distance of the 64 expression coefficients Deep3DFaceRecon's network (`face3d.py`) gives each
  frame (or every `frame_stride`-th), pred frames against truth frames over the whole set, as FID; optional: without
  its file (`--face3d`, or found under its standard name) it is reported as not computed.
- IQA: Q-Align's image scorer (the `q_align` package, not on PyPI) on 8 frames a video, when it is installed and its
  weights folder is given; else not computed.
- Glo / Exp: the variance over time of head keypoints and of expression keypoints, from dlib's 68 landmarks
  (`loopy_core.landmarks`, the `[landmarks]` extra). Glo: the nose and eye points (27-47) in crop fractions; Exp: all
  68 points after removing the head's translation, roll and scale (centre of points 27-47, eye-line angle,
  inter-ocular distance). Each is the mean over points and both coordinates of the variance, x 1e3. A video with
  landmarks in fewer than half its frames gets none. *Reconstructed*: the paper does not define its keypoints.
- Smoothness: a documented proxy of VBench's motion smoothness (VBench interpolates frames with a network): how well
  each frame is predicted by the average of its neighbours, `1 - mean |f_t - (f_t-1 + f_t+1) / 2|`
  (`metrics.motion_smoothness`). Seam jitter (`metrics.seam_jitter`, 12-frame clips) and drift (the face-colour
  distance to the truth's first frame, the worst 10 s window, `metrics.identity_drift`) are this package's own.

Networks load from the user's disk (`weights.py`: a given path, else `--weights`, $LOOPY_EVAL_WEIGHTS, ComfyUI's
models/loopy_eval, the Hugging Face hub cache; nothing is downloaded). The report gives the truth's own scores
beside the model's; FID, FVD and E-FID compare the two sets, so the truth has none.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SUITE_FPS = 25.0
CROP_SIZE = 224
CROP_MARGIN = 1.5  # face side -> crop side (*reconstructed*: syncnet_python crops about 1.4x its face box)
CLIP_LENGTH = 12  # frames per generated clip, for seam jitter
SPLITS = ("folder", "celebv-hq", "ravdess", "hdtf")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IQA_FRAMES = 8
MIN_LANDMARK_FRACTION = 0.5
HEAD_POINTS = slice(27, 48)  # nose and eyes


@dataclass(frozen=True)
class NetworkSpec:
    """A metric network: which metric needs it, the option that names its file, the file names looked for, and
    whether the run goes on without it (the metric reported as not computed)."""

    metric: str
    network: str
    option: str
    filenames: tuple[str, ...]
    optional: bool = False


NETWORKS = {
    "sync": NetworkSpec("Sync-C / Sync-D", "SyncNet", "--syncnet", ("syncnet_v2.safetensors", "syncnet_v2.model")),
    "fid": NetworkSpec("FID", "Inception-v3 (FID)", "--inception",
                       ("pt_inception-2015-12-05.safetensors", "pt_inception-2015-12-05-6726825d.pth")),
    "fvd": NetworkSpec("FVD", "I3D (Kinetics-400)", "--i3d", ("i3d_kinetics400.safetensors", "rgb_imagenet.pt")),
    "e_fid": NetworkSpec("E-FID", "Deep3DFaceRecon (3D face model)", "--face3d",
                         ("deep3dfacerecon_epoch_20.safetensors", "epoch_20.pth"), optional=True),
}
# summary rows: key -> (label, which way is better, the per-video (section, field) it averages; None: a set metric)
ROWS = {
    "sync_c": ("Sync-C", "higher", ("sync", "sync_c")),
    "sync_d": ("Sync-D", "lower", ("sync", "sync_d")),
    "fid": ("FID", "lower", None),
    "fvd": ("FVD", "lower", None),
    "e_fid": ("E-FID", "lower", None),
    "iqa": ("IQA (Q-Align)", "higher", ("iqa", "score")),
    "glo": ("Glo (head keypoint variance, x1e3)", "closer to truth", ("keypoints", "glo")),
    "exp": ("Exp (expression keypoint variance, x1e3)", "closer to truth", ("keypoints", "exp")),
    "smoothness": ("Smoothness (neighbour-average proxy)", "higher", ("smoothness", "score")),
    "drift": ("Drift (face colour, worst 10 s)", "lower", ("drift", "face_max")),
    "seam_jitter": ("Seam jitter (1 = seamless)", "closer to 1", ("seam_jitter", "ratio")),
}


# ---------------------------------------------------------------------------------------------------------------
# inputs: weights, split lists, matching
# ---------------------------------------------------------------------------------------------------------------
def resolve_weights(
    weights_dir: str | os.PathLike | None,
    paths: dict[str, str | None] | None = None,
    skip_missing: bool = False,
    report: Callable[[str], None] | None = None,
) -> dict[str, str | None]:
    """The weights file of each network in `NETWORKS`: the path given for it in `paths`, else the first of its file
    names in the search places (`weights.search_places`: `weights_dir`, $LOOPY_EVAL_WEIGHTS, ComfyUI's
    models/loopy_eval, the Hugging Face hub cache). `report` is told where each file was found. A missing required
    one raises FileNotFoundError naming the metric, the files looked for, every place searched and where to put
    them, unless `skip_missing`; a missing one maps to None and its metric is reported as not computed."""
    from .weights import ENV_WEIGHTS, find_weights, search_places

    paths = paths or {}
    places = search_places(weights_dir)
    for place in places:
        if report is not None and place.folder is not None and not place.hub and not os.path.isdir(place.folder):
            report(f"note: {place.label} {place.folder} is not a folder (searched anyway)")
    found: dict[str, str | None] = {}
    missing = []
    for key, spec in NETWORKS.items():
        given = paths.get(key)
        if given:
            if not os.path.isfile(given):
                raise FileNotFoundError(f"{spec.metric}: {spec.network} weights not found at {given} ({spec.option})")
            found[key], where = os.fspath(given), f"given with {spec.option}"
        else:
            hit = find_weights(spec.filenames, places)
            found[key], where = (hit[0], f"found in {hit[1].label}") if hit else (None, "")
        if found[key] is not None:
            if report is not None:
                report(f"{spec.network} for {spec.metric}: {found[key]} ({where})")
        elif not spec.optional:
            missing.append(f"{spec.metric} needs {spec.network} weights {' or '.join(spec.filenames)} "
                           f"(or pass {spec.option} PATH)")
    if missing and not skip_missing:
        searched = "; ".join(place.describe() for place in places)
        raise FileNotFoundError(
            "missing metric weights: " + "; ".join(missing) + f". Searched, in order: {searched}. Put each file, "
            f"under the name shown, in the --weights folder, in a folder named by ${ENV_WEIGHTS} or in ComfyUI's "
            "models/loopy_eval (README: 'Evaluating on real data'), or pass --skip-missing to report these metrics "
            "as not computed"
        )
    return found


def missing_reason(key: str) -> str:
    """Why a network's metric is not computed when no file for it was found."""
    spec = NETWORKS[key]
    return (f"not computed: no {spec.network} weights ({spec.option} PATH, or {spec.filenames[0]} in the weights "
            "folders)")


@dataclass(frozen=True)
class SplitEntry:
    """One video of a split: its file stem and the frame range `[start, end)` at 25 fps (end None: to the end)."""

    name: str
    start: int = 0
    end: int | None = None


def read_split_list(path: str | os.PathLike) -> list[SplitEntry]:
    """Read a split list: one video a line, `NAME` or `NAME START END` (frames at 25 fps, END exclusive), fields
    separated by spaces, tabs or commas; `#` starts a comment; blank lines are skipped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list not found: {path}")
    entries, seen = [], set()
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        fields = [f for f in re.split(r"[\s,]+", raw.split("#", 1)[0].strip()) if f]
        if not fields:
            continue
        if len(fields) not in (1, 3):
            raise ValueError(f"{path}:{number}: expected NAME or NAME START END, got {raw.strip()!r}")
        name, start, end = fields[0], 0, None
        if len(fields) == 3:
            if not (fields[1].isdigit() and fields[2].isdigit()):
                raise ValueError(f"{path}:{number}: START and END must be frame numbers, got {raw.strip()!r}")
            start, end = int(fields[1]), int(fields[2])
            if not 0 <= start < end:
                raise ValueError(f"{path}:{number}: need 0 <= START < END, got {start} {end}")
        if name in seen:
            raise ValueError(f"{path}:{number}: {name!r} is listed twice")
        seen.add(name)
        entries.append(SplitEntry(name, start, end))
    if not entries:
        raise ValueError(f"split list {path} names no video")
    return entries


def _videos_by_stem(folder: str | os.PathLike, flag: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} folder not found: {folder}")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            if path.stem in out:
                raise ValueError(f"{flag} has two videos named {path.stem!r}: {out[path.stem].name}, {path.name}")
            out[path.stem] = path
    return out


def match_videos(
    pred_dir: str | os.PathLike, truth_dir: str | os.PathLike, entries: list[SplitEntry] | None = None
) -> list[tuple[SplitEntry, Path, Path]]:
    """`(entry, pred video, truth video)` per video, matched by file stem. Without `entries` every video of both
    folders must have its partner; with them, every listed name must be in both (others are ignored). Unmatched
    names raise ValueError listing them."""
    pred, truth = _videos_by_stem(pred_dir, "--pred"), _videos_by_stem(truth_dir, "--truth")
    if entries is None:
        only_pred, only_truth = sorted(set(pred) - set(truth)), sorted(set(truth) - set(pred))
        if only_pred or only_truth:
            raise ValueError(f"pred and truth videos do not match by name: only in --pred: {_names(only_pred)}; only "
                             f"in --truth: {_names(only_truth)}")
        entries = [SplitEntry(name) for name in sorted(pred)]
    else:
        absent = [f"{e.name} ({', '.join(w for w, d in (('--pred', pred), ('--truth', truth)) if e.name not in d)})"
                  for e in entries if e.name not in pred or e.name not in truth]
        if absent:
            raise ValueError(f"split videos missing from the folders: {_names(absent)}")
    if not entries:
        raise ValueError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {pred_dir} and {truth_dir}")
    return [(e, pred[e.name], truth[e.name]) for e in entries]


def _names(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------------------------------------------------------
# the fixed pipeline
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PreparedVideo:
    """A video after steps 1-2: face crops `[T, 224, 224, 3]` uint8 RGB at 25 fps, mono audio `[N]` (or None)."""

    crops: torch.Tensor
    audio: np.ndarray | None
    sample_rate: int | None
    crop: dict


def prepare_video(path: str | os.PathLike, entry: SplitEntry = SplitEntry(""), size: int = CROP_SIZE,
                  margin: float = CROP_MARGIN) -> PreparedVideo:
    """Steps 1-2 of the module docstring for one video."""
    from ..face import crop_box, detect_face_box
    from ..video import read_video, resample_frames

    # 1. decode, 25 fps, frame range
    video = read_video(path)
    frames = video.frames
    if abs(video.fps - SUITE_FPS) > 1e-3:
        frames = resample_frames(frames, video.fps, SUITE_FPS)
    end = len(frames) if entry.end is None else entry.end
    if end > len(frames) or entry.start >= end:
        raise ValueError(f"{path}: frame range {entry.start}..{end} is outside its {len(frames)} frames at 25 fps")
    frames = frames[entry.start : end]
    if len(frames) < 3:
        raise ValueError(f"{path}: needs at least 3 frames at 25 fps, has {len(frames)}")
    audio = None
    if video.audio is not None and video.audio.size:
        sr = video.sample_rate
        audio = video.audio.mean(0)[round(entry.start / SUITE_FPS * sr) : round(end / SUITE_FPS * sr)]
    # 2. one steady face crop, resized
    box = detect_face_box(frames)
    info = crop_box(frames.shape[1:3], None if box is None else tuple(float(v) for v in box), margin)
    square = frames[:, info.top : info.top + info.side, info.left : info.left + info.side]
    crops = []
    for chunk in torch.from_numpy(np.ascontiguousarray(square)).split(32):
        x = chunk.permute(0, 3, 1, 2).float()
        if info.side != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        crops.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    crop = {"left": info.left, "top": info.top, "side": info.side, "face_found": info.found}
    return PreparedVideo(torch.cat(crops).contiguous(), audio, video.sample_rate if audio is not None else None, crop)


@dataclass
class Networks:
    """The loaded metric networks (None: not computed) and the optional extras."""

    syncnet: Any = None
    inception: Any = None
    i3d: Any = None
    face3d: Any = None
    landmarker: Any = None
    landmark_reason: str = ""
    iqa: Any = None
    iqa_reason: str = ""
    device: str = "cpu"


def load_networks(weights: dict[str, str | None], device: str = "cpu", qalign: str | None = None) -> Networks:
    """Build and load every network whose weights file is known (`resolve_weights`), and the landmark detector."""
    from .face3d import Face3DRecon
    from .fvd import I3D
    from .inception import IGNORED_KEYS, InceptionV3Features
    from .syncnet import SyncNet
    from .weights import load_weights, read_state_dict

    nets = Networks(device=device)
    for key, attr, cls, ignore in (("sync", "syncnet", SyncNet, ()), ("fid", "inception", InceptionV3Features,
                                   IGNORED_KEYS), ("fvd", "i3d", I3D, ()), ("e_fid", "face3d", Face3DRecon, ())):
        path = weights.get(key)
        if path is None:
            continue
        spec = NETWORKS[key]
        state = read_state_dict(path, f"{spec.network} ({spec.metric})")
        try:
            model = cls.from_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{spec.metric}: {path} ({spec.option}): {e}") from None
        net = load_weights(model, state, f"{spec.metric}: {spec.network} weights {path!r}", ignore)
        setattr(nets, attr, net.to(device))
        logger.info("loaded %s from %s", spec.network, path)
    try:
        from ..landmarks import FaceLandmarker

        nets.landmarker = FaceLandmarker()
    except (ImportError, FileNotFoundError) as e:
        nets.landmark_reason = f"not computed: {e}"
    nets.iqa, nets.iqa_reason = _load_iqa(qalign, device)
    return nets


def _load_iqa(qalign: str | None, device: str):
    """Q-Align's scorer and "", or None and why not; a given folder that does not exist is an error either way."""
    if qalign and not os.path.isdir(qalign):
        raise FileNotFoundError(f"IQA: Q-Align weights folder not found: {qalign} (--qalign)")
    if importlib.util.find_spec("q_align") is None:
        return None, "not computed: Q-Align is not installed (its q_align package, from the Q-Align repository)"
    if not qalign:
        return None, "not computed: no Q-Align weights folder given (--qalign DIR)"
    try:
        from q_align.evaluate.scorer import QAlignScorer

        return QAlignScorer(pretrained=qalign, device=device), ""
    except Exception as e:  # a third-party model: whatever fails, the report says so and the rest still runs
        return None, f"not computed: Q-Align failed to load from {qalign}: {type(e).__name__}: {e}"


def keypoint_variance(crops: torch.Tensor, landmarker) -> dict:
    """Glo and Exp of one video from its crops (module docstring)."""
    from ..landmarks import fill_missing, video_landmarks

    points, found = video_landmarks(crops.numpy(), landmarker)
    if found.mean() < MIN_LANDMARK_FRACTION:
        return {"available": False, "reason": f"landmarks in {found.mean():.0%} of the frames (dlib found no face)"}
    p = fill_missing(points, found).astype(np.float64) / crops.shape[1]  # [T, 68, 2], crop fractions
    head = p[:, HEAD_POINTS]
    centre = head.mean(1, keepdims=True)  # [T, 1, 2]
    eyes = p[:, 42:48].mean(1) - p[:, 36:42].mean(1)  # [T, 2]
    iod = np.maximum(np.linalg.norm(eyes, axis=1), 1e-6)
    angle = np.arctan2(eyes[:, 1], eyes[:, 0])
    cos, sin = np.cos(-angle)[:, None], np.sin(-angle)[:, None]
    rel = p - centre
    aligned = np.stack([cos * rel[..., 0] - sin * rel[..., 1], sin * rel[..., 0] + cos * rel[..., 1]], -1)
    aligned /= iod[:, None, None]
    return {
        "available": True,
        "glo": float(head.var(0).mean() * 1e3),
        "exp": float(aligned.var(0).mean() * 1e3),
        "landmark_frames": float(found.mean()),
    }


@torch.no_grad()
def frame_features(net, crops: torch.Tensor, stride: int = 1, batch: int = 32, forward=None) -> torch.Tensor:
    """`[T, S, S, 3]` uint8 crops -> `[ceil(T / stride), F]` per-frame features of `net` (or of `forward`, one of
    its methods), fed `[N, 3, S, S]` in 0..1: Inception's pool features, Deep3DFaceRecon's expression."""
    device = next(net.parameters()).device
    forward = forward or net
    out = [forward(x.to(device).permute(0, 3, 1, 2).float() / 255.0).cpu() for x in crops[::stride].split(batch)]
    return torch.cat(out)


def score_video(prep: PreparedVideo, audio: np.ndarray | None, sample_rate: int | None, nets: Networks,
                reference: torch.Tensor) -> dict:
    """The per-video metrics of one prepared video (sync, IQA, Glo/Exp, smoothness, drift, seam jitter)."""
    from .metrics import identity_drift, motion_smoothness, seam_jitter
    from .syncnet import embed, mfcc, sync_scores

    crops = prep.crops
    result: dict[str, Any] = {"frames": int(crops.shape[0]), "crop": prep.crop}
    # 1. lip sync
    if nets.syncnet is None:
        result["sync"] = {"available": False, "reason": missing_reason("sync")}
    elif audio is None:
        result["sync"] = {"available": False, "reason": "no audio track in the pred or the truth video"}
    else:
        try:
            video_emb, audio_emb = embed(nets.syncnet, crops, mfcc(audio, sample_rate))
            result["sync"] = {"available": True, **sync_scores(video_emb, audio_emb)}
        except ValueError as e:
            result["sync"] = {"available": False, "reason": str(e)}
    # 2. image quality
    if nets.iqa is None:
        result["iqa"] = {"available": False, "reason": nets.iqa_reason}
    else:
        from PIL import Image

        idx = np.linspace(0, len(crops) - 1, min(IQA_FRAMES, len(crops))).astype(int)
        scores = nets.iqa([Image.fromarray(crops[i].numpy()) for i in idx])
        result["iqa"] = {"available": True, "score": float(torch.as_tensor(scores).float().mean())}
    # 3. keypoint motion
    if nets.landmarker is None:
        result["keypoints"] = {"available": False, "reason": nets.landmark_reason}
    else:
        result["keypoints"] = keypoint_variance(crops, nets.landmarker)
    # 4. pixels: smoothness, drift, seams
    result["smoothness"] = motion_smoothness(crops)
    drift = identity_drift(crops, reference, SUITE_FPS)
    result["drift"] = {"available": True, "face_max": drift["face_max"], "background_max": drift["background_max"]}
    result["seam_jitter"] = seam_jitter(crops, CLIP_LENGTH)
    return result


def _mean_over_videos(videos: list[dict], side: str, section: str, key: str) -> tuple[float | None, str]:
    values = [v[side][section][key] for v in videos if v[side][section].get("available")]
    reasons = sorted({v[side][section].get("reason", "") for v in videos if not v[side][section].get("available")})
    if not values:
        return None, "; ".join(r for r in reasons if r) or "not computed"
    note = f"{len(values)} of {len(videos)} videos" if len(values) < len(videos) else ""
    return float(np.mean(values)), note


def _frechet(pred: list[torch.Tensor], truth: list[torch.Tensor], what: str, use_torchmetrics: bool) -> dict:
    """The Frechet distance of pooled pred features against pooled truth features, with the sample counts."""
    from .fvd import frechet_distance

    x, y = (torch.cat(v) if v else torch.zeros(0, 1) for v in (pred, truth))
    if min(len(x), len(y)) < 2:
        return {"available": False, "reason": f"needs at least 2 {what} in each set, got {len(x)} and {len(y)}"}
    if use_torchmetrics and importlib.util.find_spec("torchmetrics") is not None:
        value, backend = torchmetrics_fid(x, y), "torchmetrics"
    else:
        value, backend = frechet_distance(x, y), "loopy_core.eval.fvd.frechet_distance"
    note = f"{len(x)} vs {len(y)} {what}"
    if min(len(x), len(y)) <= x.shape[1]:
        note += f" (fewer than the {x.shape[1]} feature dimensions: biased and noisy; use more videos)"
    return {"available": True, "value": max(value, 0.0), "samples": [len(x), len(y)], "backend": backend,
            "note": note}


class _Precomputed(torch.nn.Module):
    """A pass-through "feature extractor" for torchmetrics: the features were computed once, by our Inception."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def torchmetrics_fid(pred_features: torch.Tensor, truth_features: torch.Tensor) -> float:
    """FID by torchmetrics' `FrechetInceptionDistance` from features `[N, F]` and `[M, F]` (no network download: it
    is given a custom extractor, which passes our Inception's features through)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(pred_features.shape[1]))
    metric.update(truth_features.double(), real=True)
    metric.update(pred_features.double(), real=False)
    return float(metric.compute())


def run_suite(
    pairs: list[tuple[SplitEntry, Path, Path]],
    nets: Networks,
    frame_stride: int = 1,
    callback: Callable[[dict], None] | None = None,
) -> dict:
    """Score every `(entry, pred, truth)` pair and the sets (see the module docstring); a JSON-ready dict."""
    from .fvd import clip_features

    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    feats: dict[str, dict[str, list]] = {key: {"pred": [], "truth": []} for key in ("fid", "fvd", "e_fid")}
    videos = []
    for index, (entry, pred_path, truth_path) in enumerate(pairs):
        # 1. the fixed pipeline on both videos
        truth = prepare_video(truth_path, entry)
        pred = prepare_video(pred_path, entry)
        audio, sample_rate, source = pred.audio, pred.sample_rate, "pred"
        if audio is None:
            audio, sample_rate, source = truth.audio, truth.sample_rate, "truth"
        reference = truth.crops[0]
        record = {"name": entry.name, "pred_file": str(pred_path), "truth_file": str(truth_path),
                  "start": entry.start, "end": entry.end, "audio_from": source}
        # 2. per-video metrics; truth against its own audio
        record["pred"] = score_video(pred, audio, sample_rate, nets, reference)
        record["truth"] = score_video(truth, truth.audio, truth.sample_rate, nets, reference)
        # 3. set features
        for side, prep in (("pred", pred), ("truth", truth)):
            if nets.inception is not None:
                feats["fid"][side].append(frame_features(nets.inception, prep.crops, frame_stride))
            if nets.i3d is not None:
                feats["fvd"][side].append(clip_features(nets.i3d, prep.crops))
            if nets.face3d is not None:
                feats["e_fid"][side].append(frame_features(nets.face3d, prep.crops, frame_stride,
                                                           forward=nets.face3d.expression))
        videos.append(record)
        if callback is not None:
            callback({"index": index, "total": len(pairs), "name": entry.name, "record": record})
    # 4. summary: means over videos, and the set metrics
    summary: dict[str, dict] = {}
    for key, (_, _, source) in ROWS.items():
        if source is None:
            continue
        section, field = source
        row: dict[str, Any] = {}
        for side in ("pred", "truth"):
            row[side], row[f"{side}_note"] = _mean_over_videos(videos, side, section, field)
        row["available"] = row["pred"] is not None
        if not row["available"]:
            row["reason"] = row["pred_note"]
        summary[key] = row
    for key, what, net in (("fid", "frames", nets.inception), ("fvd", "16-frame clips", nets.i3d),
                           ("e_fid", "frames", nets.face3d)):
        if net is None:
            summary[key] = {"available": False, "reason": missing_reason(key)}
            continue
        summary[key] = _frechet(feats[key]["pred"], feats[key]["truth"], what, use_torchmetrics=key != "fvd")
    return {
        "protocol": {
            "fps": SUITE_FPS, "crop_size": CROP_SIZE, "crop_margin": CROP_MARGIN, "sync_vshift": 15,
            "fvd_clip_frames": 16, "frame_stride": frame_stride, "videos": len(pairs),
        },
        "summary": {key: summary[key] for key in ROWS},
        "videos": videos,
    }


# ---------------------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def markdown_report(result: dict, title: str = "loopy eval-suite") -> str:
    """The summary as a Markdown table: metric, model, ground truth, better, notes."""
    protocol = result["protocol"]
    lines = [
        f"### {title}",
        "",
        (f"{protocol['videos']} videos, split `{protocol.get('split', 'folder')}`; 25 fps, one {CROP_SIZE} px face "
         f"crop per video (margin {CROP_MARGIN})."),
        "",
        "| metric | model | ground truth | better | notes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, (label, better, _) in ROWS.items():
        row = result["summary"][key]
        if not row.get("available"):
            lines.append(f"| {label} | not computed | not computed | {better} | {row.get('reason', '')} |")
            continue
        if "value" in row:  # a set metric (pred set against truth set): no truth column
            lines.append(f"| {label} | {_cell(row['value'])} | (reference set) | {better} | {row.get('note', '')} |")
            continue
        notes = "; ".join(f"{side}: {row[f'{side}_note']}" for side in ("pred", "truth") if row.get(f"{side}_note"))
        lines.append(f"| {label} | {_cell(row['pred'])} | {_cell(row['truth'])} | {better} | {notes} |")
    weights = protocol.get("weights")
    if weights:
        lines += ["", "Weights: " + ", ".join(f"{k}: `{v}`" if v else f"{k}: none" for k, v in weights.items())]
    return "\n".join(lines) + "\n"
