"""loopy_core: the Loopy library (config, models, audio, guidance, checkpoints, video I/O, synthetic world, eval).

Importing this package is cheap; heavy modules (torch, diffusers, transformers) load when their names are used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import LoopyConfig  # noqa: E402  (pure Python, cheap)

__all__ = ["LoopyConfig", "__version__"]
