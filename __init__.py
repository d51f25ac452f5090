"""ComfyUI entry point of comfyui-loopy: node mappings only; nothing heavy is imported here.

ComfyUI imports this folder by file path as a package named after the folder (often with a hyphen), so everything
below is imported relatively. `loopy_core` is importable either because it was pip-installed or because this folder
is appended to `sys.path` (appended, never prepended: ComfyUI's own top-level `nodes` module must keep winning).
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
try:
    import loopy_core  # noqa: F401
except ImportError:
    if _here not in sys.path:
        sys.path.append(_here)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
