"""Import of pretrained weights into a `LoopyModel`: SD1.5 (UNet + VAE) and AnimateDiff v2 motion modules.

Everything here is offline and never unpickles arbitrary objects (DESIGN.md Sec. 3):
- **Files**: `.safetensors`, or legacy `.ckpt/.pt/.pth/.bin` through `torch.load(weights_only=True)` only.
- **SD1.5** comes from a diffusers folder (`unet/diffusion_pytorch_model.safetensors` + `vae/...`, or a folder
  that *is* a UNet folder) or a single-file checkpoint in the original LDM layout (`model.diffusion_model.*`,
  `first_stage_model.*`: what ComfyUI users keep in `models/checkpoints`). LDM keys are converted with diffusers'
  own `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint`, given the diffusers config of the target model
  (built on the meta device from `UNetConfig` / `VAEConfig`). The same UNet weights initialise the denoiser's and
  the ReferenceNet's spatial UNet (the ReferenceNet has no output head, so exactly `conv_norm_out.*`/`conv_out.*`
  are dropped for it).
- **AnimateDiff** motion modules (`mm_sd_v15_v2.ckpt`) initialise the intra-clip temporal layers, whose state-dict
  names are AnimateDiff's own (identity key map); diffusers' `MotionAdapter` layout goes through a second explicit
  key map. The fixed sinusoid tables in the file (`pos_encoder.pe` / `pos_embed.pe`) are not loaded: ours follow
  the same formula, and a different table length or content only warns. Optionally the same tensors initialise the
  inter-clip layers too, except their output projection (kept at zero, so the layer starts as the identity) and
  their learnable positions (kept).

Loading is strict: a missing or unexpected key, or a shape that does not fit, raises `ValueError` that names the
keys (the first few and a count) and the file. All checks run before any weight is copied, so a failed import
leaves the model untouched. The SD1.5 diffusers configs ship in `assets/` (`sd15_config_json`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import UNetConfig, VAEConfig

if TYPE_CHECKING:
    from .models.loopy import LoopyModel

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).parent / "assets"
SD15_CONFIG_FILES = {"unet": "sd15_unet_config.json", "vae": "sd15_vae_config.json"}

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

LDM_UNET_PREFIX = "model.diffusion_model."  # single-file SD: the UNet
LDM_VAE_PREFIX = "first_stage_model."  # single-file SD: the VAE
LDM_IGNORED_VAE_PREFIXES = ("first_stage_model.loss.",)  # training-only loss modules of some LDM checkpoints

# diffusers folder layout: weights file names in order of preference
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
# config fields that fix the weights' shapes or meaning; a diffusers folder's config.json must agree on them
UNET_CHECKED_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "norm_num_groups",
)
VAE_CHECKED_FIELDS = (
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "scaling_factor",
)

MOTION_POSITION_SUFFIXES = ("pos_encoder.pe", "pos_embed.pe")  # AnimateDiff / diffusers MotionAdapter tables
INTER_CLIP_KEPT = (".positions.weight",)  # the inter-clip layer's learnable positions keep their own values
INTER_CLIP_ZEROED = (".temporal_transformer.proj_out.",)  # stays zero: the untrained inter-clip layer is identity
# diffusers MotionAdapter names, as (our segment, MotionAdapter segment), applied in this order to our key
MOTION_ADAPTER_RENAMES = (
    (".temporal_transformer.", "."),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
)
MAX_LISTED = 10


class StateDict(dict):
    """A `dict[str, Tensor]` that remembers the file it came from, so later errors can name it."""

    def __init__(self, data: Mapping[str, torch.Tensor] | None = None, source: str = "<in-memory state dict>"):
        super().__init__(data or {})
        self.source = source


@dataclass
class ImportReport:
    """What an import did: tensors loaded per component, keys left out (with why), and warnings."""

    source: str
    loaded: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"Imported {self.source}:"]
        lines += [f"  {name}: {n} tensors" for name, n in self.loaded.items()]
        lines += [f"  {why}: {_listing(keys, limit=3)}" for why, keys in self.skipped.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _listing(keys: list[str] | set[str], limit: int = MAX_LISTED) -> str:
    """`a, b, c ... (+N more; M in all)` for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more; {len(keys)} in all)" if len(keys) > limit else "")


def _source_of(state_dict: Mapping, source: str | None) -> str:
    return source or getattr(state_dict, "source", None) or "<in-memory state dict>"


# ---------------------------------------------------------------------------------------------------------------------
# 1. Files


def _sniff_format(path: Path) -> str | None:
    """'safetensors' or 'torch' from the first bytes (files are sometimes renamed), None when unclear."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":  # torch's zip format
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header
        return "safetensors"
    if head[:2] == b"\x80\x02":  # torch's legacy (pre-1.6) pickle format
        return "torch"
    return None


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Read one weights file into `{name: tensor}` on the CPU without running pickled code.

    `.safetensors` through safetensors; `.ckpt/.pt/.pth/.bin` through `torch.load(weights_only=True)` (plain
    tensors and containers only). A top-level `"state_dict"` wrapper (Lightning/LDM checkpoints) is unwrapped, and
    non-tensor entries (step counters) are skipped.

    Raises:
        FileNotFoundError: naming the file and the folder looked in.
        ValueError: a truncated/corrupt file, an unknown suffix, or a pickle with arbitrary Python objects.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"'{path}' is a folder; expected a weights file (.safetensors, .ckpt, .pt, .pth, .bin)")
        folder = path.parent.resolve()
        where = f"in folder '{folder}'" if folder.is_dir() else f"(folder '{folder}' does not exist)"
        raise FileNotFoundError(f"Weights file '{path.name}' not found {where}")

    suffix = path.suffix.lower()
    fmt = _sniff_format(path)
    if fmt is None:
        if suffix in SAFETENSORS_SUFFIXES:
            fmt = "safetensors"
        elif suffix in TORCH_SUFFIXES:
            fmt = "torch"
        else:
            raise ValueError(
                f"Don't know how to read '{path}': use a .safetensors file or a legacy "
                f"{'/'.join(TORCH_SUFFIXES)} PyTorch checkpoint"
            )
    elif (fmt == "safetensors") != (suffix in SAFETENSORS_SUFFIXES):
        logger.info("%s is in %s format despite its suffix; reading it as such", path, fmt)

    if fmt == "safetensors":
        obj = _read_safetensors(path)
    else:
        obj = _read_torch(path)
    return _as_state_dict(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"'{path}' is not a valid safetensors file (truncated or corrupt?): {e}") from e


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
        raise ValueError(
            f"'{path}' holds Python objects other than tensors, so it was not loaded: only plain tensors are read "
            f"from pickle checkpoints (torch.load weights_only=True), since unpickling can run arbitrary code. "
            f"{detail + ' ' if detail else ''}Convert the file to .safetensors with a tool you trust."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"'{path}' is not a valid PyTorch checkpoint (truncated or corrupt?): {e}") from e


def _as_state_dict(obj: Any, path: Path) -> StateDict:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a dictionary of named tensors")  # noqa: TRY004
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    others = [str(k) for k in obj if str(k) not in tensors]
    if others:
        logger.warning("%s: skipped %d entries that are not named tensors: %s", path, len(others), _listing(others))
    if not tensors:
        raise ValueError(f"'{path}' contains no tensors")
    return StateDict(tensors, source=str(path))


# ---------------------------------------------------------------------------------------------------------------------
# 2. SD1.5 weights in diffusers' layout


def sd15_config_json(name: str) -> dict[str, Any]:
    """The shipped SD1.5 diffusers config: `name` is "unet" (UNet2DConditionModel) or "vae" (AutoencoderKL)."""
    if name not in SD15_CONFIG_FILES:
        raise ValueError(f"Unknown SD1.5 config {name!r}; choose one of {sorted(SD15_CONFIG_FILES)}")
    path = ASSETS_DIR / SD15_CONFIG_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"Config '{path.name}' not found in '{ASSETS_DIR}': reinstall comfyui-loopy")
    return json.loads(path.read_text())


def _meta_model(cls: type, kwargs: dict[str, Any]) -> torch.nn.Module:
    """A diffusers model on the meta device: its config and parameter shapes, no memory, no download."""
    with torch.device("meta"):
        return cls(**kwargs)


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def load_sd15_weights(
    path: str | os.PathLike, unet_config: UNetConfig, vae_config: VAEConfig | None = None
) -> tuple[StateDict, StateDict | None]:
    """SD1.5-structured UNet (and VAE) weights in diffusers' key layout, checked against the configs.

    Args:
        path: a diffusers folder (with `unet/` and `vae/`), a UNet folder, or a single-file checkpoint in the
            original LDM layout (`.safetensors`, or `.ckpt` read with weights_only) or a diffusers UNet file.
        unet_config: the `UNetConfig` the weights must fit.
        vae_config: the `VAEConfig`; None (or a weight-free codec) skips the VAE.
    Returns:
        `(unet_state_dict, vae_state_dict or None)`; None when the VAE is skipped or the source has none.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(path)
    unet_kwargs = unet_config.diffusers_kwargs()
    want_vae = vae_config is not None and vae_config.kind == "autoencoder_kl"
    vae_kwargs = vae_config.diffusers_kwargs() if want_vae else None

    # 1. read the source
    if path.is_dir():
        unet_sd, vae_sd = _load_diffusers_folder(path, unet_kwargs, vae_kwargs)
    else:
        unet_sd, vae_sd = _load_single_file(path, unet_kwargs, vae_kwargs)

    # 2. check the keys and shapes against the configs (the file is named on failure)
    hint = f"The weights were made for another UNet than this config ({_brief(unet_kwargs, UNET_CHECKED_FIELDS)})."
    _check_fit(unet_sd, _shapes(_meta_model(UNet2DConditionModel, unet_kwargs)), "UNet", unet_sd.source, hint)
    if vae_sd is not None:
        hint = f"The weights were made for another VAE than this config ({_brief(vae_kwargs, VAE_CHECKED_FIELDS)})."
        _check_fit(vae_sd, _shapes(_meta_model(AutoencoderKL, vae_kwargs)), "VAE", vae_sd.source, hint)
    elif want_vae:
        logger.warning("%s has no VAE weights; the model's VAE keeps its current weights", path)
    return unet_sd, vae_sd


def _brief(kwargs: dict[str, Any], fields: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={kwargs[k]}" for k in fields if k in kwargs)


def _find_weights(folder: Path) -> Path | None:
    for name in DIFFUSERS_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _load_diffusers_folder(
    folder: Path, unet_kwargs: dict, vae_kwargs: dict | None
) -> tuple[StateDict, StateDict | None]:
    # 1. a pipeline folder (unet/, vae/) or a folder that is itself a UNet folder
    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    unet_file = _find_weights(unet_dir)
    if unet_file is None:
        raise FileNotFoundError(
            f"No UNet weights found in folder '{unet_dir}': looked for {', '.join(DIFFUSERS_WEIGHT_NAMES)} "
            f"(a diffusers folder has them under unet/; a single-file checkpoint is a .safetensors/.ckpt file)"
        )
    _check_folder_config(unet_dir, "UNet2DConditionModel", unet_kwargs, UNET_CHECKED_FIELDS)
    unet_sd = _load_weights_file(unet_file)
    logger.info("UNet weights: %s", unet_file)

    # 2. the VAE, when wanted and present
    vae_sd = None
    vae_dir = folder / "vae"
    if vae_kwargs is not None and unet_dir != folder and vae_dir.is_dir():
        vae_file = _find_weights(vae_dir)
        if vae_file is None:
            raise FileNotFoundError(
                f"No VAE weights found in folder '{vae_dir}': looked for {', '.join(DIFFUSERS_WEIGHT_NAMES)}"
            )
        _check_folder_config(vae_dir, "AutoencoderKL", vae_kwargs, VAE_CHECKED_FIELDS)
        vae_sd = _load_weights_file(vae_file)
        logger.info("VAE weights: %s", vae_file)
    return unet_sd, vae_sd


def _load_weights_file(path: Path) -> StateDict:
    """One weights file, or all shards listed by a diffusers `*.index.json`."""
    if not path.name.endswith(".index.json"):
        return load_state_dict_file(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"'{path}' is not a valid sharded-weights index (no 'weight_map'): {e}") from e
    merged = StateDict(source=str(path))
    for shard in sorted(set(weight_map.values())):
        merged.update(load_state_dict_file(path.parent / shard))
    return merged


def _check_folder_config(folder: Path, class_name: str, kwargs: dict, fields: tuple[str, ...]) -> None:
    """A diffusers folder's `config.json` must agree with our config on the fields that fix the weights."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"'{config_file}' is not valid JSON: {e}") from e
    if config.get("_class_name", class_name) != class_name:
        raise ValueError(f"'{config_file}' describes a {config['_class_name']}, expected a {class_name}")
    differ = [f"{k}: file {config[k]} vs config {kwargs[k]}" for k in fields if k in config and config[k] != kwargs[k]]
    if differ:
        raise ValueError(
            f"'{config_file}' does not match the model config: {'; '.join(differ)}. Use the Loopy config whose "
            f"base model these weights are (e.g. 'sd15' for Stable Diffusion 1.5)."
        )


def _load_single_file(path: Path, unet_kwargs: dict, vae_kwargs: dict | None) -> tuple[StateDict, StateDict | None]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    checkpoint = load_state_dict_file(path)
    source = checkpoint.source
    keys = list(checkpoint)

    # 1. which layout: LDM (full or UNet-only) or a diffusers UNet file
    if not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        if "input_blocks.0.0.weight" in checkpoint and "time_embed.0.weight" in checkpoint:
            checkpoint = StateDict({LDM_UNET_PREFIX + k: v for k, v in checkpoint.items()}, source=source)
        elif "conv_in.weight" in checkpoint and "time_embedding.linear_1.weight" in checkpoint:
            return checkpoint, None
        else:
            raise ValueError(
                f"'{path}' is not a Stable Diffusion checkpoint: no '{LDM_UNET_PREFIX}*' keys (single-file LDM "
                f"layout) and no 'conv_in.weight'/'time_embedding.*' keys (diffusers UNet). Its keys are like: "
                f"{_listing(keys)}"
            )

    # 2. convert with diffusers' converters, which want the target model's diffusers config
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_part = {k: v for k, v in checkpoint.items() if k.startswith(LDM_UNET_PREFIX)}
    unet_cfg = dict(_meta_model(UNet2DConditionModel, unet_kwargs).config)
    unet_sd = _convert_all(convert_ldm_unet_checkpoint, unet_part, unet_cfg, "UNet", source)

    vae_sd = None
    vae_part = {
        k: v
        for k, v in checkpoint.items()
        if k.startswith(LDM_VAE_PREFIX) and not k.startswith(LDM_IGNORED_VAE_PREFIXES)
    }
    if vae_kwargs is not None and vae_part:
        vae_cfg = dict(_meta_model(AutoencoderKL, vae_kwargs).config)
        vae_sd = _convert_all(convert_ldm_vae_checkpoint, vae_part, vae_cfg, "VAE", source)
    return unet_sd, vae_sd


def _convert_all(convert: Callable, ldm: dict[str, torch.Tensor], config: dict, what: str, source: str) -> StateDict:
    """Run a diffusers LDM converter and make sure it placed every input tensor (it silently drops the rest).

    The converters move tensors, or take views of them (1x1-conv attention weights -> linear), so a tensor was
    placed when an output shares its data pointer.
    """
    converted = {k: v for k, v in convert(ldm, config).items() if v is not None}
    placed = {v.data_ptr() for v in converted.values()}
    unplaced = [k for k, v in ldm.items() if v.numel() and v.data_ptr() not in placed]
    if unplaced:
        raise ValueError(
            f"{what} weights in '{source}' have {len(unplaced)} keys with no place in an SD1.5-structured model "
            f"({_brief(config, UNET_CHECKED_FIELDS if what == 'UNet' else VAE_CHECKED_FIELDS)}): "
            f"{_listing(unplaced)}. Is it an SD1.5 checkpoint (not SDXL/SD2/another model)?"
        )
    return StateDict(converted, source=source)


def _check_fit(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    what: str,
    source: str,
    hint: str,
    unmapped: list[str] | None = None,
) -> None:
    """Raise `ValueError` naming missing, unexpected (including `unmapped` file keys) and wrongly shaped keys."""
    missing = set(expected) - set(state_dict)
    unexpected = (set(state_dict) - set(expected)) | set(unmapped or ())
    mismatched = sorted(k for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k])
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{what} weights from '{source}' do not fit the model:"]
    if mismatched:
        shown = "; ".join(
            f"{k}: file {list(state_dict[k].shape)} vs model {list(expected[k])}" for k in mismatched[:MAX_LISTED]
        )
        more = f" ... (+{len(mismatched) - MAX_LISTED} more)" if len(mismatched) > MAX_LISTED else ""
        lines.append(f"  shape mismatch ({len(mismatched)}), the shapes don't match the config: {shown}{more}")
    if missing:
        lines.append(f"  missing ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {_listing(unexpected)}")
    lines.append(f"  {hint}")
    raise ValueError("\n".join(lines))


def apply_sd15(
    model: LoopyModel,
    unet_sd: Mapping[str, torch.Tensor],
    vae_sd: Mapping[str, torch.Tensor] | None = None,
    *,
    source: str | None = None,
) -> ImportReport:
    """Load SD1.5 weights (diffusers layout) into the denoiser's and the ReferenceNet's UNet, and the VAE.

    Strict: everything is checked before anything is copied. The ReferenceNet drops exactly its missing output
    head (`conv_norm_out.*`, `conv_out.*`). Other components (temporal layers, A2L, null context) are untouched.
    """
    from .models.reference_net import HEAD_KEYS

    source = _source_of(unet_sd, source)
    report = ImportReport(source=source)
    unet_brief = _brief(model.config.unet.diffusers_kwargs(), UNET_CHECKED_FIELDS)
    hint = (
        f"This model's config '{model.config.name}' has a UNet with {unet_brief}; the file was made for a model "
        f"of another size or structure (SD1.5 weights need the 'sd15' config)."
    )
    denoiser_unet = model.denoiser.unet
    reference_unet = model.reference_net.unet
    codec = model.vae.vae

    # 1. check everything first
    _check_fit(unet_sd, _shapes(denoiser_unet), "UNet (denoiser)", source, hint)
    reference_sd = {k: v for k, v in unet_sd.items() if k not in HEAD_KEYS}
    _check_fit(reference_sd, _shapes(reference_unet), "UNet (ReferenceNet)", source, hint)
    if vae_sd is not None and codec is not None:
        _check_fit(vae_sd, _shapes(codec), "VAE", _source_of(vae_sd, source), hint)

    # 2. copy
    with torch.no_grad():
        denoiser_unet.load_state_dict(unet_sd, strict=True)
        reference_unet.load_state_dict(reference_sd, strict=True)
    report.loaded["denoiser.unet"] = len(unet_sd)
    report.loaded["reference_net.unet"] = len(reference_sd)
    report.skipped["reference_net.unet: no output head"] = sorted(set(unet_sd) - set(reference_sd))

    if vae_sd is None:
        if codec is not None:
            report.warnings.append("no VAE weights given: the VAE keeps its current weights")
    elif codec is None:
        report.warnings.append("the model's codec has no weights (vae.kind='pixel_unshuffle'): VAE weights unused")
    else:
        with torch.no_grad():
            codec.load_state_dict(vae_sd, strict=True)
        report.loaded["vae.vae"] = len(vae_sd)
    for warning in report.warnings:
        logger.warning("%s: %s", source, warning)
    logger.info("%s", report)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# 3. AnimateDiff motion modules


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    source = _source_of(state_dict, None)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return StateDict({k[len("module.") :]: v for k, v in state_dict.items()}, source=source)
    return state_dict if isinstance(state_dict, StateDict) else StateDict(state_dict, source=source)


def load_animatediff(path: str | os.PathLike) -> StateDict:
    """An AnimateDiff motion-module file (`mm_sd_v15_v2.ckpt` / `.safetensors`, or a diffusers MotionAdapter
    file), unwrapped from `state_dict`/`module.` wrappers; keys otherwise as in the file."""
    return _strip_module_prefix(load_state_dict_file(path))


def motion_module_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'animatediff' (the original `...temporal_transformer.transformer_blocks.0.attention_blocks.0...` names) or
    'diffusers' (MotionAdapter's `...motion_modules.0.transformer_blocks.0.attn1...`)."""
    if any(".temporal_transformer." in k for k in state_dict):
        return "animatediff"
    if any(".motion_modules." in k and ".transformer_blocks." in k for k in state_dict):
        return "diffusers"
    return "animatediff"  # unknown: the strict check names what does not fit


def motion_module_key_map(our_keys: list[str], layout: str) -> dict[str, str]:
    """The explicit map `{file key: our key}` for the temporal layers' state-dict keys (positions excluded)."""
    if layout == "animatediff":
        return {k: k for k in our_keys}
    if layout == "diffusers":
        mapped = {}
        for ours in our_keys:
            theirs = ours
            for old, new in MOTION_ADAPTER_RENAMES:
                theirs = theirs.replace(old, new)
            mapped[theirs] = ours
        return mapped
    raise ValueError(f"Unknown motion-module layout {layout!r}; supported: 'animatediff', 'diffusers'")


def _check_position_tables(tables: dict[str, torch.Tensor], max_positions: int) -> list[str]:
    """Warnings when the file's sinusoid tables differ in length or content from ours."""
    from .models.temporal import sinusoidal_table

    warnings = []
    lengths = sorted({t.shape[-2] for t in tables.values() if t.ndim == 3})
    if any(n != max_positions for n in lengths):
        warnings.append(
            f"the motion module's position tables have length {lengths}, this model's intra-clip layers "
            f"{max_positions} (temporal.intra_max_positions); the layers keep their own sinusoid table"
        )
    differ = []
    for key, table in tables.items():
        if table.ndim != 3:
            continue
        n = min(table.shape[1], max_positions)
        ours = sinusoidal_table(n, table.shape[2])
        if not torch.allclose(table[:, :n].float(), ours, atol=1e-4):
            differ.append(key)
    if differ:
        warnings.append(f"position tables that differ from our sinusoid formula (not loaded): {_listing(differ)}")
    return warnings


def apply_animatediff(
    model: LoopyModel, mm_sd: Mapping[str, torch.Tensor], also_inter_clip: bool = False, *, source: str | None = None
) -> ImportReport:
    """Initialise `model.denoiser.intra_clip` (and optionally `inter_clip`) from a motion module.

    Args:
        mm_sd: the motion module's tensors (`load_animatediff`), AnimateDiff or diffusers MotionAdapter layout.
        also_inter_clip: also copy the tensors into the inter-clip layers, except their output projection
            (set to zero, so the untrained inter-clip layer stays the identity) and their learnable positions (kept).
    """
    source = _source_of(mm_sd, source)
    report = ImportReport(source=source)
    mm_sd = _strip_module_prefix(mm_sd)
    intra = model.denoiser.intra_clip
    inter = model.denoiser.inter_clip
    if intra is None or (also_inter_clip and inter is None):
        which = "intra-clip" if intra is None else "inter-clip"
        raise ValueError(f"this model's config switches the {which} layers off (temporal.{which.replace('-', '_')}"
                         " = false): there is nothing to load the motion module into")

    # 1. drop the fixed sinusoid tables (ours are the same formula, non-persistent)
    tables = {k: v for k, v in mm_sd.items() if k.endswith(MOTION_POSITION_SUFFIXES)}
    weights = {k: v for k, v in mm_sd.items() if k not in tables}
    report.warnings += _check_position_tables(tables, model.config.temporal.intra_max_positions)
    if tables:
        report.skipped["fixed sinusoid tables (not loaded)"] = sorted(tables)

    # 2. map the file's keys onto ours, strictly
    layout = motion_module_layout(weights)
    key_map = motion_module_key_map(list(intra.state_dict()), layout)
    hint = (
        f"Read as the {layout!r} motion-module layout. Supported: AnimateDiff v2 motion modules for SD1.5 "
        f"(mm_sd_v15_v2) in the original or diffusers MotionAdapter layout, at this config's UNet widths."
    )
    unmapped = [k for k in weights if k not in key_map]
    mapped = {key_map[k]: v for k, v in weights.items() if k in key_map}
    _check_fit(mapped, _shapes(intra), "Motion module (intra_clip)", source, hint, unmapped)

    # 3. the inter-clip layers: same tensors but keep positions and a zero output projection
    inter_sd, kept, zeroed = None, [], []
    if also_inter_clip:
        inter_sd = {}
        for key, current in inter.state_dict().items():
            if key.endswith(INTER_CLIP_KEPT):
                inter_sd[key] = current
                kept.append(key)
            elif any(part in key for part in INTER_CLIP_ZEROED):
                inter_sd[key] = torch.zeros_like(current)
                zeroed.append(key)
            elif key in mapped:
                inter_sd[key] = mapped[key]
        _check_fit(inter_sd, _shapes(inter), "Motion module (inter_clip)", source, hint)

    # 4. copy
    with torch.no_grad():
        intra.load_state_dict(mapped, strict=True)
        report.loaded["denoiser.intra_clip"] = len(mapped)
        if inter_sd is not None:
            inter.load_state_dict(inter_sd, strict=True)
            report.loaded["denoiser.inter_clip"] = len(inter_sd) - len(kept) - len(zeroed)
            report.skipped["inter_clip kept (learnable positions)"] = kept
            report.skipped["inter_clip set to zero (output projection)"] = zeroed
    for warning in report.warnings:
        logger.warning("%s: %s", source, warning)
    logger.info("%s", report)
    return report
