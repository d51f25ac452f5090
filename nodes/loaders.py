"""Loaders: a Loopy checkpoint (+ the SD1.5 base where it needs one) -> LOOPY_MODEL; wav2vec2 -> LOOPY_AUDIO_ENCODER.

Files come from ComfyUI's model folders (see `_folders`): `models/loopy` (and the package's bundled demo model),
`models/checkpoints` or `models/diffusers` for the SD1.5 base, `models/audio_encoders` for wav2vec2 folders.
ComfyUI caches a loader's output while its widgets are unchanged, so queued prompts reuse the loaded model.
"""

from __future__ import annotations

import logging
import os

from . import _folders
from ._comfy import DEVICE_CHOICES, DTYPE_CHOICES, Managed, placement, resolve_dtype
from ._types import AUDIO_ENCODER, CATEGORY, MODEL, LoopyModelHandle

logger = logging.getLogger(__name__)

_folders.register()

_DEVICE_TIP = "auto: ComfyUI's device (the GPU unless started with --cpu); cpu: always the CPU."
_DTYPE_TIP = "Weight dtype. auto: ComfyUI's choice for the device (bf16/fp16 on GPUs, fp32 on the CPU)."


def _fingerprint(path) -> str:
    """mtime + size: a changed file reloads without hashing gigabytes (as ComfyUI's LoadVideo does)."""
    stat = os.stat(path)
    return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"


def _validate(resolve, *args):
    """VALIDATE_INPUTS answer: True, or the resolver's error message (shown on the node in ComfyUI)."""
    try:
        resolve(*args)
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    return True


class LoopyModelLoader:
    DESCRIPTION = ("Loads a Loopy checkpoint (models/loopy, or the bundled demo model). A checkpoint saved without "
                   "its VAE takes it from an SD1.5 base in models/checkpoints or models/diffusers.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Loopy model (with its embedded audio encoder, if the checkpoint has one).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_folders.list_files(_folders.LOOPY_KEY), {"tooltip": "Loopy checkpoint (.safetensors) "
                           "from models/loopy; demo/loopy_demo.safetensors is bundled with the package."}),
            "base_model": (_folders.base_choices(), {"default": _folders.NONE, "tooltip": "SD1.5 base that supplies "
                           "the VAE of checkpoints saved without one; 'none' for self-contained checkpoints."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": _DTYPE_TIP}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": _DEVICE_TIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name, base_model):
        ok = _validate(_folders.resolve, _folders.LOOPY_KEY, model_name, "Loopy checkpoint")
        return ok if ok is not True else _validate(_folders.resolve_base, base_model)

    @classmethod
    def IS_CHANGED(cls, model_name, base_model, **_):
        return _fingerprint(_folders.resolve(_folders.LOOPY_KEY, model_name, "Loopy checkpoint"))

    def load(self, model_name, base_model, dtype, device):
        from loopy_core.checkpoint import load_checkpoint, load_embedded_audio_encoder

        path = _folders.resolve(_folders.LOOPY_KEY, model_name, "Loopy checkpoint")
        load_device, build_device = placement(device)
        torch_dtype = resolve_dtype(dtype, load_device)
        model = load_checkpoint(path, build_device, torch_dtype, base=_folders.resolve_base(base_model))
        encoder = load_embedded_audio_encoder(path, build_device, torch_dtype)
        logger.info("Loopy model %s (%s) on %s/%s%s", model_name, model.config.name, load_device, torch_dtype,
                    ", with its embedded audio encoder" if encoder is not None else "")
        return (LoopyModelHandle(
            Managed.wrap(model, load_device, build_device), model_name,
            None if encoder is None else Managed.wrap(encoder, load_device, build_device),
        ),)


class LoopyAudioEncoderLoader:
    DESCRIPTION = ("Loads a wav2vec2 audio encoder (a transformers folder with config.json in models/audio_encoders, "
                   "e.g. wav2vec2-base-960h). ComfyUI's own Load Audio Encoder output works in its place.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (AUDIO_ENCODER,)
    RETURN_NAMES = ("audio_encoder",)
    OUTPUT_TOOLTIPS = ("The wav2vec2 encoder for Loopy Audio Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder_name": (_folders.list_dirs("audio_encoders", "config.json"), {"tooltip": "A wav2vec2 folder "
                             "(config.json + model.safetensors) inside models/audio_encoders."}),
            "dtype": (DTYPE_CHOICES, {"default": "fp32", "tooltip": _DTYPE_TIP}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": _DEVICE_TIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, encoder_name):
        return _validate(_folders.resolve, "audio_encoders", encoder_name, "audio encoder")

    def load(self, encoder_name, dtype, device):
        from loopy_core.audio import load_wav2vec2

        path = _folders.resolve("audio_encoders", encoder_name, "audio encoder")
        load_device, build_device = placement(device)
        encoder = load_wav2vec2(path, build_device, resolve_dtype(dtype, load_device))
        return (Managed.wrap(encoder, load_device, build_device),)


NODE_CLASS_MAPPINGS = {"LoopyModelLoader": LoopyModelLoader, "LoopyAudioEncoderLoader": LoopyAudioEncoderLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"LoopyModelLoader": "Loopy Model Loader",
                              "LoopyAudioEncoderLoader": "Loopy Audio Encoder Loader"}
