"""loopy_core: the Loopy library (config, models, audio, guidance, checkpoints, video I/O, synthetic world, eval).

Importing this package is cheap: `LoopyConfig` is plain Python, and the heavy names (torch, diffusers, transformers
behind them) load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .config import LoopyConfig  # noqa: E402  (pure Python, cheap)

_LAZY = {
    "LoopyModel": "loopy_core.models.loopy",
    "LoopyPipeline": "loopy_core.pipeline",
    "GenerationOptions": "loopy_core.pipeline",
    "load_checkpoint": "loopy_core.checkpoint",
    "save_checkpoint": "loopy_core.checkpoint",
}

__all__ = ["LoopyConfig", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loopy_core' has no attribute {name!r}")
