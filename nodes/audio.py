"""Loopy Audio Encode: ComfyUI AUDIO -> LOOPY_AUDIO (per-frame windowed wav2vec2 features + the audio they cover).

The encoder is, in order of preference: ComfyUI's `AUDIO_ENCODER_OUTPUT` when connected (already encoded by its
AudioEncoderEncode node), the connected `audio_encoder` (Loopy Audio Encoder Loader, or ComfyUI's own Load Audio
Encoder), else the audio encoder embedded in the model's checkpoint. A model with log-mel features (the demo model)
needs no encoder at all, so its graph needs only an image and an audio file. The model is required because features must match it: its wav2vec2 layer count
and width, and its window of +-w frames.
"""

from __future__ import annotations

import logging

from ._comfy import Managed
from ._types import ANY_AUDIO_ENCODER, CATEGORY, FEATURES, MODEL, LoopyAudio

logger = logging.getLogger(__name__)


def cut_audio(audio: dict, seconds: float) -> dict:
    """The first `seconds` of a ComfyUI AUDIO (all of it when `seconds` <= 0 or longer than the audio)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise TypeError("audio must be a ComfyUI AUDIO: a dict with 'waveform' [B, C, T] and 'sample_rate'")
    if seconds <= 0:
        return audio
    samples = max(1, round(seconds * audio["sample_rate"]))
    return {**audio, "waveform": audio["waveform"][..., :samples]}


def features(model, audio: dict, fps: float, audio_encoder=None, encoder_output=None):
    """`AudioFeatures` for `model` from the first source available (see the module docstring)."""
    from loopy_core.audio import audio_features_from_comfy, extract_audio_features

    config = model.config.audio
    if encoder_output is None and audio_encoder is not None and not isinstance(audio_encoder, Managed):
        encoder_output = audio_encoder.encode_audio(audio["waveform"], audio["sample_rate"])  # ComfyUI's encoder
    if encoder_output is not None:
        return audio_features_from_comfy(encoder_output, fps, config, audio=audio)
    if config.kind == "logmel":  # weight-free features (the demo model): no encoder to load
        return extract_audio_features(audio["waveform"], audio["sample_rate"], fps, None, config)
    encoder = audio_encoder or model.audio_encoder
    if encoder is None:
        raise ValueError(f"the model {model.name!r} has no embedded audio encoder: connect a Loopy Audio Encoder "
                         f"Loader ({config.encoder!r}) or ComfyUI's Load Audio Encoder")
    return extract_audio_features(audio["waveform"], audio["sample_rate"], fps, encoder.ready(), config)


class LoopyAudioEncode:
    DESCRIPTION = ("Turns speech (AUDIO) into Loopy's per-frame audio features at the video's fps. Uses the connected "
                   "encoder output or audio encoder, else the model's embedded audio encoder.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (FEATURES, "FLOAT")
    RETURN_NAMES = ("audio_features", "fps")
    OUTPUT_TOOLTIPS = ("Per-frame audio features (frames = ceil(duration x fps)) and the audio they cover.",
                       "The video fps the features were made for (connect it to Create Video).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The Loopy model the features are for (and whose embedded audio "
                                             "encoder is used when no encoder is connected)."}),
                "audio": ("AUDIO", {"tooltip": "The speech that drives the video (any sample rate, mono or stereo; "
                                               "batch item 0 is used)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 60.0, "step": 1.0,
                                  "tooltip": "Video frames per second (Loopy models are trained at 25)."}),
                "max_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 3600.0, "step": 0.01,
                                          "tooltip": "Use only the first max_seconds of the audio; 0 = all of it."}),
            },
            "optional": {
                "audio_encoder": (ANY_AUDIO_ENCODER, {"tooltip": "wav2vec2 from Loopy Audio Encoder Loader or "
                                                      "ComfyUI's Load Audio Encoder; default: the model's own."}),
                "encoder_output": ("AUDIO_ENCODER_OUTPUT", {"tooltip": "ComfyUI's Audio Encoder Encode output of this "
                                                            "same audio (with max_seconds 0); used instead of "
                                                            "running an encoder here."}),
            },
        }

    def encode(self, model, audio, fps, max_seconds, audio_encoder=None, encoder_output=None):
        audio = cut_audio(audio, max_seconds)
        return (LoopyAudio(features(model, audio, fps, audio_encoder, encoder_output), audio), float(fps))


NODE_CLASS_MAPPINGS = {"LoopyAudioEncode": LoopyAudioEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"LoopyAudioEncode": "Loopy Audio Encode"}
