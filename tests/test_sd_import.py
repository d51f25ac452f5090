"""Tests for `loopy_core.sd_import`: SD1.5 (diffusers folder, LDM single file) and AnimateDiff imports, and errors.

Everything runs offline on tiny random models written into tmp folders.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loopy_core.config import LoopyConfig, UNetConfig, VAEConfig
from loopy_core.models.loopy import LoopyModel
from loopy_core.models.reference_net import HEAD_KEYS
from loopy_core.models.temporal import sinusoidal_table
from loopy_core.sd_import import (
    apply_animatediff,
    apply_sd15,
    load_animatediff,
    load_sd15_weights,
    load_state_dict_file,
    motion_module_key_map,
    sd15_config_json,
)


def _load_helper(name: str):
    """Import a helper module that sits next to this file (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_loopy_tests_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


to_ldm_single_file = _load_helper("ldm_layout").to_ldm_single_file

SD15_VAE_SAMPLE_SIZE = 512  # SD1.5's vae/config.json; VAEConfig leaves AutoencoderKL's default (32), tiling only


class Unpicklable:
    """A non-tensor object: a checkpoint holding it must not be unpickled."""


@pytest.fixture(scope="module")
def cfg() -> LoopyConfig:
    return LoopyConfig.tiny()


@pytest.fixture(scope="module")
def source_models(cfg):
    """A tiny random UNet and VAE, the 'pretrained' weights of these tests."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg.unet.diffusers_kwargs())
    vae = AutoencoderKL(**cfg.vae.diffusers_kwargs())
    with torch.no_grad():  # make every tensor distinct from a fresh init (norms start at 1/0)
        for p in list(unet.parameters()) + list(vae.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    return unet, vae


@pytest.fixture
def model(cfg) -> LoopyModel:
    torch.manual_seed(1)
    return LoopyModel(cfg)


def _assert_equal_state(module: torch.nn.Module, source: dict[str, torch.Tensor], skip: tuple[str, ...] = ()):
    state = module.state_dict()
    assert set(state) == set(source) - set(skip)
    for key, value in state.items():
        assert torch.equal(value, source[key]), key


def _assert_sd15_loaded(model: LoopyModel, unet, vae):
    unet_sd, vae_sd = unet.state_dict(), vae.state_dict()
    _assert_equal_state(model.denoiser.unet, unet_sd)
    _assert_equal_state(model.reference_net.unet, unet_sd, skip=HEAD_KEYS)
    _assert_equal_state(model.vae.vae, vae_sd)


def _ldm_file(cfg, unet, vae) -> dict[str, torch.Tensor]:
    return to_ldm_single_file(
        unet.state_dict(), vae.state_dict(), cfg.unet.diffusers_kwargs(), cfg.vae.diffusers_kwargs()
    )


# ---------------------------------------------------------------------------------------------------------------------
# shipped configs


def test_sd15_config_json_equals_diffusers_config_of_sd15_preset():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg = LoopyConfig.sd15()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg.unet.diffusers_kwargs())
        vae = AutoencoderKL(**cfg.vae.diffusers_kwargs())

    def public(config):
        return {k: v for k, v in json.loads(json.dumps(dict(config))).items() if not k.startswith("_")}

    unet_json, vae_json = sd15_config_json("unet"), sd15_config_json("vae")
    assert unet_json["_class_name"] == "UNet2DConditionModel" and vae_json["_class_name"] == "AutoencoderKL"
    assert public(unet_json) == public(unet.config)
    # the one difference: SD1.5's VAE config says 512 (the image size, used by VAE tiling only)
    assert vae_json["sample_size"] == SD15_VAE_SAMPLE_SIZE == cfg.resolution
    assert {**public(vae_json), "sample_size": vae.config.sample_size} == public(vae.config)
    with pytest.raises(ValueError, match="choose one of"):
        sd15_config_json("text_encoder")


# ---------------------------------------------------------------------------------------------------------------------
# SD1.5: diffusers folders


def test_diffusers_folder_round_trip(tmp_path, cfg, source_models, model):
    unet, vae = source_models
    unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")

    unet_sd, vae_sd = load_sd15_weights(tmp_path, cfg.unet, cfg.vae)
    before = {k: v.clone() for k, v in model.denoiser.intra_clip.state_dict().items()}
    report = apply_sd15(model, unet_sd, vae_sd)

    _assert_sd15_loaded(model, unet, vae)
    assert report.skipped["reference_net.unet: no output head"] == sorted(HEAD_KEYS)
    assert report.loaded == {
        "denoiser.unet": len(unet_sd),
        "reference_net.unet": len(unet_sd) - 4,
        "vae.vae": len(vae_sd),
    }
    assert not report.warnings
    _assert_equal_state(model.denoiser.intra_clip, before)  # temporal layers untouched


def test_unet_folder_fp16_variant_and_bin(tmp_path, cfg, source_models, model):
    unet, _ = source_models
    unet.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    unet_sd, vae_sd = load_sd15_weights(tmp_path / "fp16", cfg.unet, cfg.vae)  # a folder that is a UNet folder
    assert vae_sd is None
    for key, value in unet.state_dict().items():
        assert torch.equal(unet_sd[key], value)

    unet.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    unet_sd, _ = load_sd15_weights(tmp_path / "bin", cfg.unet)
    report = apply_sd15(model, unet_sd, None)
    _assert_equal_state(model.denoiser.unet, unet.state_dict())
    assert report.warnings == ["no VAE weights given: the VAE keeps its current weights"]


def test_folder_config_that_disagrees_is_named(tmp_path, cfg, source_models):
    unet, _ = source_models
    unet.save_pretrained(tmp_path / "unet")
    config_file = tmp_path / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["attention_head_dim"] = 8  # shapes still fit, meaning does not
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json.*attention_head_dim: file 8 vs config 4"):
        load_sd15_weights(tmp_path, cfg.unet, cfg.vae)


def test_folder_without_weights_names_folder(tmp_path, cfg):
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No UNet weights found in folder .*unet"):
        load_sd15_weights(tmp_path, cfg.unet, cfg.vae)


# ---------------------------------------------------------------------------------------------------------------------
# SD1.5: single-file LDM checkpoints


def test_ldm_single_file_safetensors(tmp_path, cfg, source_models, model):
    unet, vae = source_models
    path = tmp_path / "tiny_sd.safetensors"
    save_file(_ldm_file(cfg, unet, vae), str(path))

    unet_sd, vae_sd = load_sd15_weights(path, cfg.unet, cfg.vae)
    assert unet_sd.source == str(path)
    apply_sd15(model, unet_sd, vae_sd)
    _assert_sd15_loaded(model, unet, vae)


def test_ldm_ckpt_loads_with_weights_only(tmp_path, cfg, source_models, model):
    unet, vae = source_models
    path = tmp_path / "tiny_sd.ckpt"
    torch.save({"state_dict": _ldm_file(cfg, unet, vae), "global_step": 1234}, path)

    apply_sd15(model, *load_sd15_weights(path, cfg.unet, cfg.vae))
    _assert_sd15_loaded(model, unet, vae)


def test_ldm_key_names_at_sd15_structure(tmp_path):
    """Full SD1.5 structure (2 layers per block, 4 levels), with 1-element stand-ins: every key lands in place."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from loopy_core.sd_import import _load_single_file

    unet_kwargs, vae_kwargs = UNetConfig().diffusers_kwargs(), VAEConfig().diffusers_kwargs()
    with torch.device("meta"):
        unet_keys = list(UNet2DConditionModel(**unet_kwargs).state_dict())
        vae_keys = list(AutoencoderKL(**vae_kwargs).state_dict())
    unet_sd = {k: torch.tensor([float(i)]) for i, k in enumerate(unet_keys)}
    vae_sd = {k: torch.tensor([float(i)]).reshape(1, 1) for i, k in enumerate(vae_keys)}
    ldm = to_ldm_single_file(unet_sd, vae_sd, unet_kwargs, vae_kwargs)
    assert len(unet_keys) == 686 and len(vae_keys) == 248  # SD1.5's tensor counts
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm  # upsampler of the attention-free block
    assert "first_stage_model.decoder.up.3.block.0.conv1.weight" in ldm
    path = tmp_path / "sd15_names.safetensors"
    save_file(ldm, str(path))

    got_unet, got_vae = _load_single_file(path, unet_kwargs, vae_kwargs)
    assert {k: v.flatten().item() for k, v in got_unet.items()} == {k: v.item() for k, v in unet_sd.items()}
    assert {k: v.flatten().item() for k, v in got_vae.items()} == {k: v.flatten().item() for k, v in vae_sd.items()}


def test_ldm_keys_the_converter_cannot_place_are_named(tmp_path, cfg, source_models):
    unet, vae = source_models
    ldm = _ldm_file(cfg, unet, vae)
    ldm["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(8, 8)  # an SDXL-style extra
    path = tmp_path / "sdxl_like.safetensors"
    save_file(ldm, str(path))
    with pytest.raises(ValueError, match=r"sdxl_like\.safetensors.*label_emb\.0\.0\.weight"):
        load_sd15_weights(path, cfg.unet, cfg.vae)


def test_pixel_codec_config_skips_vae(tmp_path, cfg, source_models):
    unet, vae = source_models
    path = tmp_path / "tiny_sd.safetensors"
    save_file(_ldm_file(cfg, unet, vae), str(path))
    _, vae_sd = load_sd15_weights(path, cfg.unet, VAEConfig(kind="pixel_unshuffle"))
    assert vae_sd is None


# ---------------------------------------------------------------------------------------------------------------------
# AnimateDiff motion modules


def _motion_module(model_seed: int, cfg) -> dict[str, torch.Tensor]:
    """AnimateDiff-layout tensors from another tiny model's intra-clip layers, randomised, plus the sinusoid
    tables that real files carry (one per attention block)."""
    torch.manual_seed(model_seed)
    other = LoopyModel(cfg).denoiser.intra_clip
    mm = {k: torch.randn_like(v) for k, v in other.state_dict().items()}
    for key in list(mm):
        if key.endswith((".attention_blocks.0.to_q.weight", ".attention_blocks.1.to_q.weight")):
            dim = mm[key].shape[0]
            mm[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoidal_table(32, dim)
    return mm


def test_animatediff_round_trip(tmp_path, cfg, model, caplog):
    mm = _motion_module(7, cfg)
    path = tmp_path / "mm_tiny_v2.safetensors"
    save_file(mm, str(path))
    inter_before = {k: v.clone() for k, v in model.denoiser.inter_clip.state_dict().items()}

    with caplog.at_level(logging.WARNING, logger="loopy_core.sd_import"):
        report = apply_animatediff(model, load_animatediff(path))

    weights = {k: v for k, v in mm.items() if not k.endswith("pos_encoder.pe")}
    _assert_equal_state(model.denoiser.intra_clip, weights)
    _assert_equal_state(model.denoiser.inter_clip, inter_before)
    assert len(report.skipped["fixed sinusoid tables (not loaded)"]) == len(mm) - len(weights) > 0
    assert not report.warnings and not caplog.records


def test_animatediff_also_inter_clip(cfg, model):
    mm = _motion_module(7, cfg)
    positions_before = {k: v.clone() for k, v in model.denoiser.inter_clip.state_dict().items() if "positions" in k}
    report = apply_animatediff(model, mm, also_inter_clip=True)

    inter = model.denoiser.inter_clip.state_dict()
    assert set(inter) - set(mm) == set(positions_before)
    for key, value in inter.items():
        if key in positions_before:
            assert torch.equal(value, positions_before[key]), key
        elif ".temporal_transformer.proj_out." in key:
            assert not value.any(), key
        else:
            assert torch.equal(value, mm[key]), key
    zeroed = report.skipped["inter_clip set to zero (output projection)"]
    assert len(zeroed) == 2 * len(positions_before)  # weight and bias per module

    # the untrained inter-clip layer is still the identity
    layer = model.denoiser.inter_clip.get("down", 0, 0)
    F, M, C = cfg.frames_per_clip, cfg.num_motion_frames, cfg.unet.block_out_channels[0]
    hidden, context = torch.randn(F, C, 4, 4), torch.randn(M, C, 4, 4)
    assert torch.equal(layer(hidden, F, context=context), hidden)


def test_animatediff_ckpt_with_module_prefix(tmp_path, cfg, model):
    mm = _motion_module(3, cfg)
    path = tmp_path / "mm_tiny_v2.ckpt"
    torch.save({"state_dict": {"module." + k: v for k, v in mm.items()}}, path)
    apply_animatediff(model, load_animatediff(path))
    _assert_equal_state(model.denoiser.intra_clip, {k: v for k, v in mm.items() if "pos_encoder" not in k})


def test_diffusers_motion_adapter_layout(cfg, model):
    """A real diffusers MotionAdapter's state dict (its own names, incl. `pos_embed.pe`) loads through the map."""
    from diffusers import MotionAdapter

    torch.manual_seed(5)
    adapter = MotionAdapter(
        block_out_channels=cfg.unet.block_out_channels,
        motion_layers_per_block=cfg.unet.layers_per_block,
        motion_num_attention_heads=cfg.temporal.num_attention_heads,
        motion_norm_num_groups=cfg.unet.norm_num_groups,
        motion_max_seq_length=cfg.temporal.intra_max_positions,
    )
    adapter_sd = {k: torch.randn_like(v) if not k.endswith("pe") else v for k, v in adapter.state_dict().items()}
    report = apply_animatediff(model, adapter_sd)

    key_map = motion_module_key_map(list(model.denoiser.intra_clip.state_dict()), "diffusers")
    expected = {ours: adapter_sd[theirs] for theirs, ours in key_map.items()}
    _assert_equal_state(model.denoiser.intra_clip, expected)
    assert len(report.skipped["fixed sinusoid tables (not loaded)"]) == len(adapter_sd) - len(key_map)
    assert not report.warnings  # diffusers' table is the same sinusoid formula


def test_animatediff_table_length_mismatch_only_warns(cfg, model, caplog):
    mm = _motion_module(7, cfg)
    for key in [k for k in mm if k.endswith("pos_encoder.pe")]:
        mm[key] = sinusoidal_table(24, mm[key].shape[-1])  # AnimateDiff v1's length
    with caplog.at_level(logging.WARNING, logger="loopy_core.sd_import"):
        report = apply_animatediff(model, mm)
    assert any("length [24]" in w and "32" in w for w in report.warnings)
    assert any("length [24]" in r.getMessage() for r in caplog.records)
    _assert_equal_state(model.denoiser.intra_clip, {k: v for k, v in mm.items() if "pos_encoder" not in k})


def test_animatediff_wrong_keys_are_named(cfg, model):
    mm = _motion_module(7, cfg)
    del mm["mid_block.motion_modules.0.temporal_transformer.proj_in.weight"]
    mm["down_blocks.0.motion_modules.0.temporal_transformer.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        apply_animatediff(model, mm, source="mm_broken.ckpt")
    message = str(err.value)
    assert "mm_broken.ckpt" in message
    assert "missing (1): mid_block.motion_modules.0.temporal_transformer.proj_in.weight" in message
    assert "unexpected (1): down_blocks.0.motion_modules.0.temporal_transformer.extra.weight" in message


# ---------------------------------------------------------------------------------------------------------------------
# errors


def test_truncated_safetensors_names_file(tmp_path, cfg, source_models):
    unet, vae = source_models
    good = tmp_path / "good.safetensors"
    save_file(_ldm_file(cfg, unet, vae), str(good))
    data = good.read_bytes()
    bad = tmp_path / "half.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"half\.safetensors' is not a valid safetensors file \(truncated or corrupt"):
        load_state_dict_file(bad)
    with pytest.raises(ValueError, match=r"half\.safetensors"):
        load_sd15_weights(bad, cfg.unet, cfg.vae)


def test_truncated_ckpt_names_file(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"a": torch.randn(64, 64)}, good)
    bad = tmp_path / "half.ckpt"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"half\.ckpt' is not a valid PyTorch checkpoint"):
        load_state_dict_file(bad)


def test_missing_file_names_file_and_folder(tmp_path, cfg):
    with pytest.raises(FileNotFoundError) as err:
        load_sd15_weights(tmp_path / "v1-5-pruned-emaonly.safetensors", cfg.unet, cfg.vae)
    assert "v1-5-pruned-emaonly.safetensors" in str(err.value) and str(tmp_path.resolve()) in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"mm_sd_v15_v2\.ckpt.*does not exist"):
        load_animatediff(tmp_path / "nowhere" / "mm_sd_v15_v2.ckpt")


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"weight": torch.zeros(2), "payload": Unpicklable()}, path)
    with pytest.raises(ValueError, match=r"evil\.ckpt' holds Python objects other than tensors.*weights_only=True"):
        load_state_dict_file(path)


def test_file_of_another_model_names_its_keys(tmp_path, cfg, model):
    path = tmp_path / "other_model.safetensors"
    save_file({"encoder.layers.0.fc.weight": torch.zeros(4, 4), "head.bias": torch.zeros(4)}, str(path))
    with pytest.raises(ValueError, match=r"other_model\.safetensors' is not a Stable Diffusion.*head\.bias"):
        load_sd15_weights(path, cfg.unet, cfg.vae)

    unrelated = load_state_dict_file(path)
    with pytest.raises(ValueError) as err:
        apply_sd15(model, unrelated, None)
    message = str(err.value)
    assert "other_model.safetensors" in message
    assert "missing (" in message and "conv_in.weight" in message
    assert "unexpected (2): encoder.layers.0.fc.weight, head.bias" in message

    with pytest.raises(ValueError, match=r"(?s)missing \(.*unexpected \(2\): encoder\.layers\.0\.fc\.weight"):
        apply_animatediff(model, unrelated)


def test_full_size_tensor_in_tiny_model_is_a_shape_mismatch(tmp_path, cfg, source_models, model):
    unet, vae = source_models
    unet_sd = dict(unet.state_dict())
    unet_sd["conv_in.weight"] = torch.zeros(320, 4, 3, 3)  # SD1.5's first conv
    before = {k: v.clone() for k, v in model.denoiser.unet.state_dict().items()}
    with pytest.raises(ValueError) as err:
        apply_sd15(model, unet_sd, vae.state_dict(), source="sd15.safetensors")
    message = str(err.value)
    assert "sd15.safetensors" in message and "shapes don't match the config" in message
    assert "conv_in.weight: file [320, 4, 3, 3] vs model [32, 4, 3, 3]" in message
    _assert_equal_state(model.denoiser.unet, before)  # nothing was copied

    # the same from a single file: caught at load time, naming the file
    ldm = _ldm_file(cfg, unet, vae)
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(320, 4, 3, 3)
    path = tmp_path / "full_size.safetensors"
    save_file(ldm, str(path))
    with pytest.raises(ValueError, match=r"(?s)full_size\.safetensors.*conv_in\.weight: file \[320, 4, 3, 3\]"):
        load_sd15_weights(path, cfg.unet, cfg.vae)
