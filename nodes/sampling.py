"""Sampling nodes: Loopy Sampler (one clip, dual guidance) and Loopy Long Video (every clip of the audio, stitched).

Both are thin calls into `LoopyPipeline` (`run_clip` / `clips`). Each run builds its own `VideoState` (reference
encoding, noise generator, history) from its inputs, so nothing carries from one prompt to the next except what the
graph passes explicitly (the LOOPY_MOTION buffer). Progress goes to ComfyUI's progress bar every step, and the
pipeline checks ComfyUI's interrupt flag between steps, so a cancel stops within one step.
"""

from __future__ import annotations

import math

from ._comfy import output_device, sampling
from ._types import (
    CATEGORY,
    FEATURES,
    MODEL,
    MOTION,
    LoopyMotion,
    generation_options,
    motion_buffer,
    motion_control_inputs,
    sampling_inputs,
    speed_inputs,
)
from .audio import cut_audio

_INPUT_TIPS = {
    "model": (MODEL, {"tooltip": "The Loopy model."}),
    "reference": ("IMAGE", {"tooltip": "The portrait to animate (centre-cropped to a square at the model's "
                                       "resolution; batch item 0 is used)."}),
    "audio_features": (FEATURES, {"tooltip": "Per-frame audio features from Loopy Audio Encode."}),
}


def _start(model, reference, options, motion: LoopyMotion | None):
    """A fresh pipeline and video state for this run; the motion buffer's history (if any) continues a video."""
    pipe = model.pipeline()
    state = pipe.start_video(reference, options.seed)
    if motion is not None and motion.history is not None:
        motion.check(model.config)
        state.history = motion.history.to(pipe.device, pipe.dtype)
    return pipe, state


class LoopySampler:
    DESCRIPTION = ("Generates one 12-frame clip of the video with dual guidance (audio and reference). Chain samplers "
                   "through the motion output, clip_index 0, 1, 2, ..., and batch their frames.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", MOTION)
    RETURN_NAMES = ("frames", "motion")
    OUTPUT_TOOLTIPS = ("The clip's frames (the last clip is cut to the audio's length).",
                       "The motion-frame buffer with this clip added: connect it to the next clip's sampler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_INPUT_TIPS,
                "motion": (MOTION, {"tooltip": "The motion-frame buffer: from Loopy Motion Frames for the first clip, "
                                               "else from the previous clip's sampler."}),
                "clip_index": ("INT", {"default": 0, "min": 0, "max": 100000, "step": 1,
                                       "tooltip": "Which clip of the audio to generate: frames 12k .. 12k+11."}),
                **sampling_inputs(),
            },
            "optional": {**motion_control_inputs(), **speed_inputs()},
        }

    def sample(self, model, reference, audio_features, motion, clip_index, steps, scheduler, audio_cfg, ref_cfg, seed,
               head_motion=-1.0, expression_motion=-1.0, guidance_end=1.0):
        options = generation_options(steps, scheduler, audio_cfg, ref_cfg, seed, head_motion, expression_motion,
                                     guidance_end)
        with sampling(options.steps, f"loopy clip {clip_index}") as (bar, cancel):
            pipe, state = _start(model, reference, options, motion)
            frames = pipe.run_clip(state, audio_features.features, clip_index, options,
                                   callback=lambda info: bar.update(info["step"]), cancel=cancel)
        return (frames.to(output_device()), motion_buffer(state.history, model.config))


class LoopyLongVideo:
    DESCRIPTION = ("Generates the whole video for the audio, clip after clip (each clip sees the earlier ones through "
                   "the motion frames), ready for Create Video -> Save Video.")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", MOTION)
    RETURN_NAMES = ("frames", "audio", "fps", "motion")
    OUTPUT_TOOLTIPS = ("All frames: ceil(audio duration x fps).", "The audio, cut to the frames' duration.",
                       "Frames per second of the video.", "The motion-frame buffer after the last clip, to continue "
                                                          "the video with more audio.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {**_INPUT_TIPS, **sampling_inputs()},
            "optional": {
                "motion": (MOTION, {"tooltip": "Continue an earlier video (motion output of another Loopy node); "
                                               "default: start a new video from the reference."}),
                **motion_control_inputs(),
                **speed_inputs(),
            },
        }

    def generate(self, model, reference, audio_features, steps, scheduler, audio_cfg, ref_cfg, seed, motion=None,
                 head_motion=-1.0, expression_motion=-1.0, guidance_end=1.0):
        import torch

        options = generation_options(steps, scheduler, audio_cfg, ref_cfg, seed, head_motion, expression_motion,
                                     guidance_end)
        features = audio_features.features
        clips = math.ceil(features.num_frames / model.config.frames_per_clip)
        with sampling(clips * options.steps, "loopy video") as (bar, cancel):
            pipe, state = _start(model, reference, options, motion)
            frames = [f.to(output_device()) for f in pipe.clips(
                reference, features, options, state=state, cancel=cancel,
                callback=lambda info: bar.update(info["clip"] * info["steps"] + info["step"]))]
        frames = torch.cat(frames)
        audio = cut_audio(audio_features.audio, frames.shape[0] / features.fps)
        return (frames, audio, float(features.fps), motion_buffer(state.history, model.config))


NODE_CLASS_MAPPINGS = {"LoopySampler": LoopySampler, "LoopyLongVideo": LoopyLongVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"LoopySampler": "Loopy Sampler", "LoopyLongVideo": "Loopy Long Video"}
