"""Test helper: load the node pack as ComfyUI does, make tiny model files, and read/run UI-format workflows.

- `load_pack()`: the repo root imported by file path under the hyphenated name `comfyui-loopy` (once per process).
- `make_model_files(root)`: a models folder with tiny Loopy checkpoints, a tiny single-file SD1.5 base and a tiny
  wav2vec2 folder, under the names the shipped workflows use.
- `to_api(workflow, defs)` (from `loopy_core.comfy_queue`): a UI workflow (version 0.4) -> the API prompt `/prompt`
  executes, the way the frontend's `graphToPrompt` does it, from node definitions in `/object_info` form
  (`object_info_of` makes them from classes).
- `BUILTINS`: stand-ins for the ComfyUI built-in nodes the workflows use, with the same inputs and outputs as the
  real ones (ComfyUI 0.3.64; the integration test compares them with a running ComfyUI's `/object_info`).
- `run_api(prompt, classes)`: execute a prompt with the node classes, in dependency order.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

# the UI -> API conversion ships in loopy_core (for `loopy comfyui-queue`); the tests take it from here
from loopy_core.comfy_queue import FRONTEND_ONLY, input_kind, is_widget, to_api, widget_values  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-loopy"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))

# names the shipped workflows use (tests create tiny files under these names)
DEMO_MODEL = "demo/loopy_demo.safetensors"
SD15_MODEL = "loopy_sd15.safetensors"
SD15_BASE_FILE = "v1-5-pruned-emaonly-fp16.safetensors"
WAV2VEC2 = "wav2vec2-base-960h"
FACE, SPEECH = "loopy_face.png", "loopy_speech.wav"


def load_pack():
    """The repo root as ComfyUI imports a custom node: by file path, as a package named after its folder."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str):
    load_pack()
    return sys.modules[f"{PACK_NAME}.nodes.{name}"]


# ---- tiny files


def speech(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like signal: a 150 Hz buzz under a 4 Hz syllable envelope, plus a little noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    return (0.3 * env * np.sin(2 * np.pi * 150 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_model_files(models: Path) -> Path:
    """`models/{loopy,checkpoints,audio_encoders}` with tiny stand-ins under the workflows' file names."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from loopy_core.audio import tiny_wav2vec2
    from loopy_core.checkpoint import save_checkpoint
    from loopy_core.config import LoopyConfig
    from loopy_core.models import LoopyModel

    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    model = LoopyModel(cfg)
    encoder = tiny_wav2vec2(cfg.audio)
    # the demo: one self-contained file with its audio encoder
    save_checkpoint(model, models / "loopy" / DEMO_MODEL, audio_encoder=encoder)
    # an SD1.5-style setup: checkpoint without VAE, the VAE from a single-file base, wav2vec2 as a folder
    save_checkpoint(model, models / "loopy" / SD15_MODEL, include_vae=False)
    encoder.save_pretrained(models / "audio_encoders" / WAV2VEC2)
    ldm = _load_helper("ldm_layout").to_ldm_single_file(
        UNet2DConditionModel(**cfg.unet.diffusers_kwargs()).state_dict(), model.vae.vae.state_dict(),
        cfg.unet.diffusers_kwargs(), cfg.vae.diffusers_kwargs(),
    )
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(models / "checkpoints" / SD15_BASE_FILE))
    return models


def make_inputs(folder: Path, seconds: float = 1.0) -> tuple[Path, Path]:
    from PIL import Image

    from loopy_core.video import save_wav

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((80, 72, 3)) * 255).astype(np.uint8)).save(folder / FACE)
    save_wav(folder / SPEECH, speech(seconds), 16000)
    return folder / FACE, folder / SPEECH


def _load_helper(name: str):
    spec = importlib.util.spec_from_file_location(f"_loopy_tests_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- stand-ins for ComfyUI's built-in nodes (same inputs and outputs as ComfyUI 0.3.64)


class LoadImage:
    INPUT_TYPES = classmethod(lambda cls: {"required": {"image": ([FACE], {"image_upload": True})}})
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load"
    input_dir: Path = Path(".")

    def load(self, image):
        from loopy_core.image import load_image

        pixels = torch.from_numpy(load_image(self.input_dir / image))[None]
        return pixels, torch.zeros(1, 64, 64)


class LoadAudio:
    INPUT_TYPES = classmethod(lambda cls: {"required": {"audio": ([SPEECH], {"audio_upload": True})}})
    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "load"
    input_dir: Path = Path(".")

    def load(self, audio):
        from loopy_core.video import load_audio

        waveform, rate = load_audio(self.input_dir / audio)
        return ({"waveform": torch.from_numpy(np.atleast_2d(waveform))[None], "sample_rate": rate},)


class ImageBatch:
    INPUT_TYPES = classmethod(lambda cls: {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}})
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"

    def batch(self, image1, image2):
        return (torch.cat([image1, image2]),)


class CreateVideo:
    INPUT_TYPES = classmethod(lambda cls: {
        "required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
        "optional": {"audio": ("AUDIO",)},
    })
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "create"

    def create(self, images, fps, audio=None):
        return ({"images": images, "fps": fps, "audio": audio},)


class SaveVideo:
    INPUT_TYPES = classmethod(lambda cls: {"required": {
        "video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
        "format": (["auto", "mp4"], {"default": "auto"}), "codec": (["auto", "h264"], {"default": "auto"}),
    }})
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    saved: list = []

    def save(self, video, filename_prefix, format, codec):
        SaveVideo.saved.append(video)
        return ()


BUILTINS = {c.__name__: c for c in (LoadImage, LoadAudio, ImageBatch, CreateVideo, SaveVideo)}


# ---- node definitions, UI -> API, execution


def object_info_of(classes: dict[str, type]) -> dict:
    """Node definitions in the shape of ComfyUI's `/object_info` (the parts the conversion needs)."""
    info = {}
    for name, cls in classes.items():
        types = cls.INPUT_TYPES()
        info[name] = {
            "input": {k: {n: list(v) for n, v in types.get(k, {}).items()} for k in ("required", "optional")},
            "input_order": {k: list(types.get(k, {})) for k in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return info


def run_api(prompt: dict, classes: dict[str, type]) -> dict:
    """Execute an API prompt with the given node classes; returns every node's outputs by id."""
    results: dict[str, tuple] = {}

    def run(node_id: str):
        if node_id not in results:
            node = prompt[node_id]
            kwargs = {}
            for name, value in node["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    value = run(value[0])[value[1]]
                kwargs[name] = value
            cls = classes[node["class_type"]]
            results[node_id] = getattr(cls(), cls.FUNCTION)(**kwargs)
        return results[node_id]

    for node_id in prompt:
        run(node_id)
    return results


def read_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())
