"""Loopy Motion Frames: the motion-frame buffer (LOOPY_MOTION) that carries a video's past into its next clip.

Without frames the buffer is empty: the first clip's motion frames are the reference image, the way training pads
the start of a video. With frames (the IMAGE of an earlier video, e.g. its last clips) their VAE latents fill the
buffer, so the next clip continues that motion; only the last frames the temporal segment module reaches are kept
(124 for the paper's settings).
"""

from __future__ import annotations

from ._types import CATEGORY, MODEL, MOTION, motion_buffer


class LoopyMotionFrames:
    DESCRIPTION = ("Starts a video's motion-frame buffer: empty (the clip starts from the reference image), or filled "
                   "from the frames of an earlier video so the next clip continues its motion.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (MOTION,)
    RETURN_NAMES = ("motion",)
    OUTPUT_TOOLTIPS = ("The motion-frame buffer for Loopy Sampler or Loopy Long Video.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": (MODEL, {"tooltip": "The Loopy model (its VAE encodes the frames)."})},
            "optional": {"frames": ("IMAGE", {"tooltip": "Frames of an earlier video to continue from (the last "
                                                        "ones are used); leave empty to start a new video."})},
        }

    def build(self, model, frames=None):
        history = None if frames is None else model.pipeline().encode_frames(frames)
        return (motion_buffer(history, model.config),)


NODE_CLASS_MAPPINGS = {"LoopyMotionFrames": LoopyMotionFrames}
NODE_DISPLAY_NAME_MAPPINGS = {"LoopyMotionFrames": "Loopy Motion Frames"}
