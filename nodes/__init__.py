"""ComfyUI nodes of comfyui-loopy (category `Loopy`): thin adapters over `loopy_core`.

Each module of this package defines its own `NODE_CLASS_MAPPINGS` / `NODE_DISPLAY_NAME_MAPPINGS`; this file merges
them. Import only relatively: ComfyUI has a top-level module called `nodes` of its own.

Nodes (id -> inputs -> outputs):
- `LoopyModelLoader`: checkpoint, SD1.5 base, dtype, device -> LOOPY_MODEL
- `LoopyAudioEncoderLoader`: wav2vec2 folder, dtype, device -> LOOPY_AUDIO_ENCODER
- `LoopyAudioEncode`: model, AUDIO, fps (+ encoder or ComfyUI encoder output) -> LOOPY_AUDIO, fps
- `LoopyMotionFrames`: model (+ IMAGE frames to continue) -> LOOPY_MOTION
- `LoopySampler`: model, IMAGE, LOOPY_AUDIO, LOOPY_MOTION, clip index, sampling widgets -> IMAGE (a clip), LOOPY_MOTION
- `LoopyLongVideo`: model, IMAGE, LOOPY_AUDIO, sampling widgets (+ LOOPY_MOTION) -> IMAGE, AUDIO, fps, LOOPY_MOTION
- `LoopyFaceCrop`: IMAGE, size, margin -> IMAGE (square face crop), LOOPY_CROP
- `LoopyPasteBack`: original IMAGE, frames IMAGE, LOOPY_CROP, feather -> IMAGE (frames at the original size)
"""

from __future__ import annotations

from . import audio, buffer, face, loaders, sampling

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in (loaders, audio, buffer, sampling, face):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
