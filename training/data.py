"""Training samples from preprocessed shards (`training.preprocess`).

Each item is drawn deterministically from `(seed, global index)`; `EpochSampler` (which lives in the main process,
so loader workers can stay alive across epochs and keep their shard caches) hands out the global indices
`epoch * len + i`. A resumed run therefore sees exactly the batches it would have seen
(`accelerator.skip_first_batches` skips the consumed ones). Stage 1 yields (reference frame, target frame)
pairs; stage 2 yields a 12-frame target clip, the TSM's motion frames computed from up to 124 history frames (the
video start padded exactly as at inference, by the same `TemporalSegmentModule`), the clip's audio windows and the
clip's motion statistics.

Item (stage 2; `F = 1` and no `motion` in stage 1):
    target [C, F, h, w], ref [C, h, w], motion [C, M, h, w], audio [F, 2w+1, L, D], motion_stats [2],
    mouth [F, 4] (mouth box: centre x, y, half-width, half-height as image fractions; older shards: lower face)
With `previous_clip=True` (training's `self_history_prob`), stage 2 also gives the F frames before the target with
the conditions that clip is generated from (its own motion frames and audio), and whether the video had them:
    prev_target [C, F, h, w], prev_motion [C, M, h, w], prev_audio [F, 2w+1, L, D], has_prev [] (0 or 1; the
    prev_* fields are zeros when the target starts less than F frames into the video)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from loopy_core.config import LoopyConfig
from loopy_core.models.tsm import TemporalSegmentModule
from loopy_core.motion import motion_statistics

logger = logging.getLogger(__name__)


def read_index(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "index.json"
    if not path.is_file():
        where = str(Path(data_dir).resolve())
        raise FileNotFoundError(f"no index.json in {where!r}; run `python -m training.preprocess`")
    index = json.loads(path.read_text())
    if not index.get("videos"):
        raise ValueError(f"{path} lists no videos")
    return index


def check_compatible(index: dict, config: LoopyConfig) -> None:
    """The shards must have been made for this model's codec, resolution, fps and audio features."""
    made_for = LoopyConfig.from_dict(index["config"])
    for field in ("resolution", "fps", "vae", "audio"):
        if getattr(made_for, field) != getattr(config, field):
            raise ValueError(
                f"the shards were preprocessed for a model with a different {field} ({getattr(made_for, field)}) "
                f"than the one being trained ({getattr(config, field)}); rerun training.preprocess with --model"
            )


class ShardDataset(torch.utils.data.Dataset):
    def __init__(self, data_dir: str | Path, config: LoopyConfig, stage: int, seed: int = 0, cache: bool = True,
                 previous_clip: bool = False):
        if previous_clip and stage != 2:
            raise ValueError("previous_clip needs stage 2 (video clips)")
        self.previous_clip = previous_clip
        self.dir = Path(data_dir)
        self.index = read_index(self.dir)
        check_compatible(self.index, config)
        self.config = config
        self.stage = stage
        self.seed = seed
        self.frames = config.frames_per_clip if stage == 2 else 1
        self.tsm = TemporalSegmentModule(config.tsm)
        self.videos = [v for v in self.index["videos"] if v["num_frames"] > self.frames]
        if not self.videos:
            raise ValueError(f"no video in {self.dir} is longer than {self.frames} frames")
        lengths = np.array([v["num_frames"] for v in self.videos], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.length = max(1, int(lengths.sum()))  # items per epoch: one per frame of data
        self._cache: dict[str, dict[str, torch.Tensor]] = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def _tensors(self, video: dict, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if self._cache is not None and video["id"] in self._cache:
            return self._cache[video["id"]]
        with safe_open(str(self.dir / video["shard"]), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in names if k in f.keys()}
        if "mouth" not in tensors:  # shards from before the mouth box: the lower face
            tensors["mouth"] = torch.tensor([[0.5, 0.7, 0.16, 0.08]]).expand(video["num_frames"], 4)
        if self._cache is not None:
            self._cache[video["id"]] = tensors
        return tensors

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(i)])
        video = self.videos[rng.choice(len(self.videos), p=self.weights)]
        data = self._tensors(video, ("latents", "audio", "head", "expression", "mouth"))
        T, F = video["num_frames"], self.frames
        start = int(rng.integers(0, T - F + 1))
        ref_index = int(rng.integers(0, T - F)) if T > F else 0
        if ref_index >= start:  # any frame outside the target clip
            ref_index += F
        latents = data["latents"]
        ref = latents[ref_index].float()
        clip = slice(start, start + F)
        item = {"target": latents[clip].float().permute(1, 0, 2, 3).contiguous(), "ref": ref}
        item["audio"] = self._audio_windows(data["audio"], start, T)  # [F, 2w+1, L, D]
        item["mouth"] = data["mouth"][clip].float()
        if self.stage == 2:
            item["motion"] = self._motion_frames(latents, start, ref)
            item["motion_stats"] = motion_statistics(data["head"][clip], data["expression"][clip])
            if self.previous_clip:
                item.update(self._previous_clip(data, start, T, ref, item))
        else:
            item["motion_stats"] = torch.zeros(2)
        return item

    def _previous_clip(self, data: dict, start: int, T: int, ref: torch.Tensor, item: dict) -> dict:
        F = self.frames
        if start < F:  # no whole clip before the target: zeros of the same shapes
            prev = {f"prev_{name}": torch.zeros_like(item[name]) for name in ("target", "motion", "audio")}
            return {**prev, "has_prev": torch.tensor(0.0)}
        return {
            "prev_target": data["latents"][start - F : start].float().permute(1, 0, 2, 3).contiguous(),
            "prev_motion": self._motion_frames(data["latents"], start - F, ref),
            "prev_audio": self._audio_windows(data["audio"], start - F, T),
            "has_prev": torch.tensor(1.0),
        }

    def _audio_windows(self, audio: torch.Tensor, start: int, T: int) -> torch.Tensor:
        """The audio windows of frames `start..start+F-1`, edges clamped inside the video."""
        w = self.config.audio.window
        idx = (torch.arange(start, start + self.frames)[:, None] + torch.arange(-w, w + 1)[None]).clamp(0, T - 1)
        return audio[idx].float()

    def _motion_frames(self, latents: torch.Tensor, start: int, ref: torch.Tensor) -> torch.Tensor:
        """The TSM's motion frames before frame `start`, the video start padded as at inference."""
        history = latents[max(0, start - self.tsm.span) : start].float().permute(1, 0, 2, 3)[None]  # [1, C, t, h, w]
        return self.tsm(history if history.shape[2] else None, ref[None])[0]


class EpochSampler(torch.utils.data.Sampler):
    """Global item indices `epoch * n + i` for `i` in `0..n-1`; `set_epoch` is called from the training loop."""

    def __init__(self, n: int):
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))
