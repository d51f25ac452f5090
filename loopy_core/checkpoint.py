"""Loopy checkpoints: one safetensors file whose metadata carries the model config as JSON.

Format (version 1):
- tensors: `LoopyModel.state_dict()` keys (`reference_net.*`, `denoiser.*`, `audio_to_latents.*`, and `vae.*` when
  the codec has weights and `include_vae` is set);
- metadata: `{"format": "loopy", "format_version": "1", "config": <LoopyConfig JSON>, ...}` plus any extra string
  entries (for example a model card);
- optionally an embedded audio encoder (small models like the demo's): `audio_encoder.*` wav2vec2 tensors and its
  transformers config as JSON under the metadata key `audio_encoder_config`.
So a file is self-describing: `read_config(path)` needs no tensors, and `load_checkpoint(path)` rebuilds the model.
Loading is strict: missing and unexpected keys and shape mismatches are reported by name together with the file.
Only safetensors is read here; nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import LoopyConfig

logger = logging.getLogger(__name__)

FORMAT = "loopy"
FORMAT_VERSION = "1"


def _describe_keys(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"{shown}{f' ... ({len(keys)} in all)' if len(keys) > limit else ''}"


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, with clear errors for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path.name!r} not found in {str(path.parent.resolve())!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; a Loopy checkpoint is one .safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{str(path)!r} is not a safetensors file (only {size} bytes; truncated?)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100_000_000):
            raise ValueError(f"{str(path)!r} is not a valid safetensors file (bad header length; truncated or corrupt?)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file (unreadable header: {e})") from e
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(
            f"{str(path)!r} is truncated: its header describes {8 + n + end} bytes but the file has {size}"
        )
    return header


def read_config(path: str | os.PathLike) -> LoopyConfig:
    """The `LoopyConfig` stored in a Loopy checkpoint's metadata (reads only the header)."""
    meta = read_header(path).get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a Loopy checkpoint (no 'format: loopy' metadata). If it is an SD1.5 checkpoint, "
            "pass it as the base model (--base); if it is an AnimateDiff motion module, pass --animatediff to "
            "`loopy init`."
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has Loopy format version {meta.get('format_version')!r}; this package reads "
            f"version {FORMAT_VERSION}. Upgrade comfyui-loopy."
        )
    return LoopyConfig.from_json(meta.get("config", ""))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    return dict(read_header(path).get("__metadata__") or {})


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    include_vae: bool = True,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
    audio_encoder: torch.nn.Module | None = None,
) -> Path:
    """Write `model` (a `LoopyModel`) atomically: a temp file in the same folder, renamed when complete.

    `audio_encoder` (a transformers wav2vec2) is embedded when given, so the file alone can generate."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"Loopy checkpoints are .safetensors files; got {str(path)!r}")
    state = model.state_dict() if include_vae else model.trainable_state_dict()
    if audio_encoder is not None:
        state = dict(state)
        state.update({f"audio_encoder.{k}": v for k, v in audio_encoder.state_dict().items()})
    tensors = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    if audio_encoder is not None:
        meta["audio_encoder_config"] = audio_encoder.config.to_json_string()
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, allow_missing=()) -> None:
    """`model.load_state_dict(state)` that names every missing/unexpected key and shape mismatch with `source`.

    Keys under a prefix in `allow_missing` may be absent (they keep their current values)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (the config does not match the tensors): {_describe_keys(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    base: str | os.PathLike | None = None,
    config_changes: dict | None = None,
):
    """Rebuild the `LoopyModel` stored at `path`. A checkpoint saved without its VAE needs `base` (an SD1.5
    diffusers folder or single file) to supply it.

    `config_changes` (`LoopyConfig.replace` arguments, e.g. `{"a2l": {"keep_level": True}}`) builds the model with
    a changed config: tensors of parts the change adds keep their initialisation, tensors of parts it removes are
    dropped, and both are logged by name; shapes that no longer fit are still an error."""
    from .models.loopy import LoopyModel

    config = read_config(path)
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("audio_encoder.")}
    if config_changes:
        config = config.replace(**config_changes)
    model = LoopyModel(config)
    if config_changes:
        own = model.state_dict()
        added = [k for k in own if k not in state and not k.startswith("vae.")]
        dropped = [k for k in state if k not in own]
        state = {k: v for k, v in state.items() if k in own}
        state.update({k: own[k] for k in added})
        logger.info("config changes %s: %d new tensors initialised (%s), %d dropped (%s)", config_changes,
                    len(added), _describe_keys(added, 4) if added else "-", len(dropped),
                    _describe_keys(dropped, 4) if dropped else "-")
    has_vae = any(k.startswith("vae.") for k in state)
    needs_vae = any(k.startswith("vae.") for k in model.state_dict())
    if needs_vae and not has_vae:
        if base is None:
            raise ValueError(
                f"{str(path)!r} holds no VAE weights; pass the SD1.5 base model it was trained from "
                "(--base PATH: a diffusers folder or a single-file checkpoint)"
            )
        from .sd_import import load_sd15_weights

        _, vae_state = load_sd15_weights(base, config.unet, config.vae)
        if vae_state is None:
            raise ValueError(f"The base model {str(base)!r} has no VAE weights")
        load_state_into(model.vae.vae, vae_state, f"VAE of {str(base)!r}")
    load_state_into(model, state, f"Checkpoint {str(path)!r}", allow_missing=() if has_vae else ("vae.",))
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()


def load_embedded_audio_encoder(path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32):
    """The wav2vec2 embedded in a Loopy checkpoint, or None when the file has none."""
    meta = read_metadata(path)
    if "audio_encoder_config" not in meta:
        return None
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    encoder = Wav2Vec2Model(Wav2Vec2Config.from_dict(json.loads(meta["audio_encoder_config"])))
    prefix = "audio_encoder."
    with safe_open(str(path), framework="pt") as f:
        state = {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    load_state_into(encoder, state, f"Audio encoder in {str(path)!r}", allow_missing=("masked_spec_embed",))
    encoder.requires_grad_(False)
    return encoder.to(device=device, dtype=dtype).eval()
