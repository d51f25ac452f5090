"""ComfyUI nodes of comfyui-loopy (category `Loopy`): thin adapters over `loopy_core`.

Each module of this package defines its own `NODE_CLASS_MAPPINGS` / `NODE_DISPLAY_NAME_MAPPINGS`; this file merges
them. Import only relatively: ComfyUI has a top-level module called `nodes` of its own.
"""

from __future__ import annotations

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
