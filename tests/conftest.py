"""Shared test setup: offline, CPU, deterministic, tiny configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_config():
    from loopy_core.config import LoopyConfig

    return LoopyConfig.tiny()


def tiny_world(root, videos: int, seconds: float, seed: int):
    """`videos` synthetic videos in `root/videos`, a tiny checkpoint with its wav2vec2 embedded, and the shards
    `training.preprocess` makes of them in `root/shards`. Returns the checkpoint's path."""
    from loopy_core.audio import tiny_wav2vec2
    from loopy_core.checkpoint import save_checkpoint
    from loopy_core.config import LoopyConfig
    from loopy_core.models import LoopyModel
    from loopy_core.synthetic.dataset import write_dataset
    from training.preprocess import main as preprocess

    write_dataset(root / "videos", videos=videos, seconds=seconds, size=64, seed=seed)
    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    ckpt = save_checkpoint(LoopyModel(cfg), root / "tiny.safetensors", audio_encoder=tiny_wav2vec2(cfg.audio))
    assert preprocess(["--videos", str(root / "videos"), "--out", str(root / "shards"), "--model", str(ckpt)]) == 0
    return ckpt


@pytest.fixture(scope="session")
def make_tiny_world():
    """`tiny_world` as a fixture (test files do not import conftest)."""
    return tiny_world
