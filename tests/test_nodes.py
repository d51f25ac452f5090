"""The ComfyUI nodes without ComfyUI: declarations, model folders, each node on a tiny model, cancel, the comfy path
(progress, interrupt, ModelPatcher, folder registration) through stand-ins for ComfyUI's modules."""

from __future__ import annotations

import gc
import importlib.util
import inspect
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

_spec = importlib.util.spec_from_file_location("_loopy_tests_comfy_graph", Path(__file__).with_name("comfy_graph.py"))
cg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cg)

FPS = 25.0
STEPS = 2
NODES_DIR = cg.ROOT / "nodes"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = cg.make_model_files(tmp_path_factory.mktemp("models"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPY_MODELS_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def nodes(models):
    return cg.load_pack().NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def demo(nodes):
    return nodes["LoopyModelLoader"]().load(cg.DEMO_MODEL, "none", "auto", "auto")[0]


def audio(seconds: float, sample_rate: int = 16000) -> dict:
    return {"waveform": torch.from_numpy(cg.speech(seconds, sample_rate))[None, None], "sample_rate": sample_rate}


def reference() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).random((1, 72, 80, 3)).astype(np.float32))


def run(node_cls, **kwargs):
    return getattr(node_cls(), node_cls.FUNCTION)(**kwargs)


def sample_widgets(seed: int = 0, **over) -> dict:
    return {"steps": STEPS, "scheduler": "ddim", "audio_cfg": 0.0, "ref_cfg": 0.0, "seed": seed, **over}


# ---- declarations


def test_every_node_is_declared_consistently(nodes):
    display = cg.load_pack().NODE_DISPLAY_NAME_MAPPINGS
    assert set(nodes) == {"LoopyModelLoader", "LoopyAudioEncoderLoader", "LoopyAudioEncode", "LoopyMotionFrames",
                          "LoopySampler", "LoopyLongVideo", "LoopyFaceCrop", "LoopyPasteBack"}
    for node_id, cls in nodes.items():
        assert node_id.startswith("Loopy") and display[node_id].startswith("Loopy ")
        assert cls.CATEGORY == "Loopy" and len(cls.DESCRIPTION) > 20
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        assert len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        types_ = cls.INPUT_TYPES()
        assert set(types_) <= {"required", "optional", "hidden"}
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        required, optional = types_.get("required", {}), types_.get("optional", {})
        assert list(params)[1:] == [*required, *optional], node_id
        for name in required:
            assert params[name].default is inspect.Parameter.empty, (node_id, name)
        for name in optional:
            assert params[name].default is not inspect.Parameter.empty, (node_id, name)
        for name, spec in {**required, **optional}.items():
            options = spec[1]
            assert options.get("tooltip"), (node_id, name)
            if spec[0] in ("INT", "FLOAT"):
                assert {"default", "min", "max", "step"} <= set(options), (node_id, name)
                assert options["min"] <= options["default"] <= options["max"], (node_id, name)
            if isinstance(spec[0], list) and "default" in options:
                assert options["default"] in spec[0], (node_id, name)
        for hook in ("VALIDATE_INPUTS", "IS_CHANGED"):
            if hasattr(cls, hook):
                hook_params = [p for p in inspect.signature(getattr(cls, hook)).parameters if p != "_"]
                assert set(hook_params) <= set(required) | set(optional), (node_id, hook)


def test_widget_ranges(nodes):
    sampler = nodes["LoopySampler"].INPUT_TYPES()["required"]
    assert (sampler["steps"][1]["min"], sampler["steps"][1]["max"]) == (1, 200)
    for name in ("audio_cfg", "ref_cfg"):
        assert (sampler[name][1]["min"], sampler[name][1]["max"]) == (0.0, 20.0)
    assert nodes["LoopyLongVideo"].INPUT_TYPES()["required"]["steps"] == sampler["steps"]
    fps = nodes["LoopyAudioEncode"].INPUT_TYPES()["required"]["fps"][1]
    assert (fps["min"], fps["max"], fps["default"]) == (1.0, 60.0, 25.0)
    from loopy_core.pipeline import SCHEDULERS

    assert sampler["scheduler"][0] == list(SCHEDULERS)


def test_node_sources_follow_the_house_rules():
    for path in NODES_DIR.glob("*.py"):
        text = path.read_text()
        assert "from __future__ import annotations" in text, path.name
        assert not re.search(r"^\s*print\(", text, re.M), path.name
        assert not re.search(r"^(import|from)\s+(nodes|comfy|folder_paths)\b", text, re.M), (
            f"{path.name} imports ComfyUI (or the top-level `nodes`) eagerly"
        )


# ---- model folders


def test_loader_lists_models_and_bundled_files(nodes, models, tmp_path, monkeypatch):
    folders = cg.pack_module("_folders")
    listed = nodes["LoopyModelLoader"].INPUT_TYPES()["required"]
    assert listed["model_name"][0] == sorted([cg.DEMO_MODEL, cg.SD15_MODEL])
    assert listed["base_model"][0] == ["none", f"checkpoints/{cg.SD15_BASE_FILE}"]
    assert nodes["LoopyAudioEncoderLoader"].INPUT_TYPES()["required"]["encoder_name"][0] == [cg.WAV2VEC2]
    # models bundled in loopy_core/assets/** are listed and resolve without any copy or download
    bundled = tmp_path / "assets"
    (bundled / "extra").mkdir(parents=True)
    (bundled / "extra" / "bundled.safetensors").write_bytes(b"x")
    (bundled / "sd15_unet_config.json").write_text("{}")
    monkeypatch.setattr(folders, "bundled_dir", lambda: bundled)
    assert "extra/bundled.safetensors" in folders.list_files(folders.LOOPY_KEY)
    assert folders.resolve(folders.LOOPY_KEY, "extra/bundled.safetensors") == bundled / "extra" / "bundled.safetensors"
    assert not any(n.endswith(".json") for n in folders.list_files(folders.LOOPY_KEY))
    monkeypatch.setattr(folders, "bundled_dir", lambda: tmp_path / "absent")
    assert folders.list_files(folders.LOOPY_KEY) == sorted([cg.DEMO_MODEL, cg.SD15_MODEL])


@pytest.mark.parametrize("name,message", [
    ("../loopy/demo/loopy_demo.safetensors", "'..'"),
    ("demo/../../checkpoints/x.safetensors", "'..'"),
    ("..\\secret.safetensors", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("C:\\models\\x.safetensors", "absolute path"),
    ("missing.safetensors", "not found in the 'loopy' model folders"),
])
def test_file_widgets_stay_inside_the_model_folders(nodes, name, message):
    loader = nodes["LoopyModelLoader"]
    answer = loader.VALIDATE_INPUTS(model_name=name, base_model="none")
    assert isinstance(answer, str) and message in answer
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        run(loader, model_name=name, base_model="none", dtype="fp32", device="cpu")
    encoders = nodes["LoopyAudioEncoderLoader"]
    assert isinstance(encoders.VALIDATE_INPUTS(encoder_name=name.replace(".safetensors", "")), str)
    assert "'..'" in loader.VALIDATE_INPUTS(model_name=cg.DEMO_MODEL, base_model="checkpoints/../loopy/x.safetensors")
    assert loader.VALIDATE_INPUTS(model_name=cg.DEMO_MODEL, base_model="none") is True


def test_base_model_choice_is_checked(nodes):
    folders = cg.pack_module("_folders")
    assert folders.resolve_base(f"checkpoints/{cg.SD15_BASE_FILE}").name == cg.SD15_BASE_FILE
    with pytest.raises(ValueError, match="'checkpoints/<file>' or 'diffusers/<folder>'"):
        folders.resolve_base("loras/x.safetensors")
    with pytest.raises(ValueError, match="holds no VAE weights"):
        run(nodes["LoopyModelLoader"], model_name=cg.SD15_MODEL, base_model="none", dtype="fp32", device="cpu")


# ---- audio


class ComfyStyleEncoder:
    """Stands in for ComfyUI's AUDIO_ENCODER: `encode_audio(waveform, sample_rate)` -> AUDIO_ENCODER_OUTPUT."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode_audio(self, waveform, sample_rate):
        from loopy_core.audio import prepare_waveform

        wave = prepare_waveform(waveform, sample_rate)
        with torch.no_grad():
            hidden = self.encoder(wave[None], output_hidden_states=True).hidden_states
        return {"encoded_audio": hidden[-1], "encoded_audio_all_layers": tuple(hidden), "audio_samples": wave.numel()}


def test_audio_encode_from_every_encoder_source(nodes, demo):
    encode = nodes["LoopyAudioEncode"]
    speech = audio(1.3)
    embedded, fps = run(encode, model=demo, audio=speech, fps=FPS, max_seconds=0.0)
    assert fps == FPS and embedded.features.num_frames == math.ceil(1.3 * FPS) == 33
    assert embedded.audio is speech
    loaded = run(nodes["LoopyAudioEncoderLoader"], encoder_name=cg.WAV2VEC2, dtype="fp32", device="cpu")[0]
    by_loader = run(encode, model=demo, audio=speech, fps=FPS, max_seconds=0.0, audio_encoder=loaded)[0]
    torch.testing.assert_close(by_loader.features.feats, embedded.features.feats)
    comfy_encoder = ComfyStyleEncoder(loaded.module)
    by_comfy = run(encode, model=demo, audio=speech, fps=FPS, max_seconds=0.0, audio_encoder=comfy_encoder)[0]
    torch.testing.assert_close(by_comfy.features.feats, embedded.features.feats, atol=1e-4, rtol=1e-4)
    output = comfy_encoder.encode_audio(speech["waveform"], speech["sample_rate"])
    by_output = run(encode, model=demo, audio=speech, fps=FPS, max_seconds=0.0, encoder_output=output)[0]
    torch.testing.assert_close(by_output.features.feats, by_comfy.features.feats)
    cut = run(encode, model=demo, audio=audio(1.3, 44100), fps=12.0, max_seconds=0.5)[0]
    assert cut.features.num_frames == 6 and cut.audio["waveform"].shape[-1] == 22050


def test_audio_encode_without_any_encoder_says_what_to_connect(nodes, models):
    handle = run(nodes["LoopyModelLoader"], model_name=cg.SD15_MODEL, base_model=f"checkpoints/{cg.SD15_BASE_FILE}",
                 dtype="fp32", device="cpu")[0]
    assert handle.audio_encoder is None
    with pytest.raises(ValueError, match="no embedded audio encoder: connect a Loopy Audio Encoder Loader"):
        run(nodes["LoopyAudioEncode"], model=handle, audio=audio(0.5), fps=FPS, max_seconds=0.0)


# ---- sampling


def test_sampler_chains_clips_through_the_motion_buffer(nodes, demo):
    features = run(nodes["LoopyAudioEncode"], model=demo, audio=audio(1.0), fps=FPS, max_seconds=0.0)[0]
    start = run(nodes["LoopyMotionFrames"], model=demo)[0]
    assert start.history is None
    sampler = nodes["LoopySampler"]
    common = dict(model=demo, reference=reference(), audio_features=features, **sample_widgets())
    frames0, motion1 = run(sampler, motion=start, clip_index=0, **common)
    frames1, motion2 = run(sampler, motion=motion1, clip_index=1, **common)
    frames2, _ = run(sampler, motion=motion2, clip_index=2, **common)
    assert [f.shape[0] for f in (frames0, frames1, frames2)] == [12, 12, 1]  # 25 frames of audio
    assert frames0.shape[1:] == (64, 64, 3) and frames0.device.type == "cpu"
    assert motion1.history.shape[2] == 12 and motion2.history.shape[2] == 24 and motion1.history.device.type == "cpu"
    again, motion1_again = run(sampler, motion=start, clip_index=0, **common)  # same inputs, same clip
    assert torch.equal(again, frames0) and torch.equal(motion1_again.history, motion1.history)
    assert start.history is None and motion1.history.shape[2] == 12  # inputs are never changed
    with pytest.raises(ValueError, match="clip_index 3 is outside 0..2"):
        run(sampler, motion=motion2, clip_index=3, **common)
    continued = run(nodes["LoopyMotionFrames"], model=demo, frames=torch.cat([frames0, frames1]))[0]
    assert continued.history.shape[2] == 24


def test_long_video_frames_match_the_audio_and_runs_repeat(nodes, demo):
    features = run(nodes["LoopyAudioEncode"], model=demo, audio=audio(1.1), fps=FPS, max_seconds=0.0)[0]
    long_video = nodes["LoopyLongVideo"]
    common = dict(model=demo, reference=reference(), audio_features=features)
    frames, out_audio, fps, motion = run(long_video, **common, **sample_widgets(seed=3))
    assert frames.shape == (math.ceil(1.1 * FPS), 64, 64, 3) and fps == FPS
    assert out_audio["sample_rate"] == 16000 and out_audio["waveform"].shape[-1] == round(16000 * 1.1)
    assert motion.history.shape[2] == frames.shape[0]
    again = run(long_video, **common, **sample_widgets(seed=3))[0]
    other = run(long_video, **common, **sample_widgets(seed=4, audio_cfg=1.5, ref_cfg=2.0))[0]
    assert torch.equal(frames, again) and not torch.equal(frames, other)
    with pytest.raises(ValueError, match="set both head_motion and expression_motion"):
        run(long_video, **common, **sample_widgets(), head_motion=0.5)
    intense = run(long_video, **common, **sample_widgets(seed=3), head_motion=0.5, expression_motion=0.2)[0]
    assert intense.shape == frames.shape
    guided = run(long_video, **common, **sample_widgets(seed=4, audio_cfg=1.5, ref_cfg=2.0), guidance_end=1.0)[0]
    early = run(long_video, **common, **sample_widgets(seed=4, audio_cfg=1.5, ref_cfg=2.0), guidance_end=0.5)[0]
    assert torch.equal(guided, other) and not torch.equal(early, other)


def test_cancel_stops_the_run_and_the_next_run_is_unaffected(nodes, demo, monkeypatch):
    from loopy_core.pipeline import GenerationCancelled, VideoState

    comfy = cg.pack_module("_comfy")
    features = run(nodes["LoopyAudioEncode"], model=demo, audio=audio(1.0), fps=FPS, max_seconds=0.0)[0]
    common = dict(model=demo, reference=reference(), audio_features=features, **sample_widgets())
    clean = run(nodes["LoopyLongVideo"], **common)[0]
    gc.collect()
    states_before = sum(type(o) is VideoState for o in gc.get_objects())
    params_before = {k: v.clone() for k, v in demo.managed.module.state_dict().items()}
    attrs_before = set(vars(demo.managed.module))
    updates = []
    original = comfy.Progress.update

    def update_then_cancel(self, value):
        updates.append(value)
        original(self, value)
        if value == 3:  # the user presses cancel during clip 1
            comfy.CANCEL.set()

    monkeypatch.setattr(comfy.Progress, "update", update_then_cancel)
    with pytest.raises(GenerationCancelled):
        run(nodes["LoopyLongVideo"], **common)
    assert updates == [1, 2, 3] and not comfy.CANCEL.is_set()
    monkeypatch.setattr(comfy.Progress, "update", original)
    after = run(nodes["LoopyLongVideo"], **common)[0]
    assert torch.equal(after, clean)
    # nothing of those runs stays on the model or anywhere else
    gc.collect()
    assert sum(type(o) is VideoState for o in gc.get_objects()) <= states_before
    assert set(vars(demo.managed.module)) == attrs_before
    assert all(torch.equal(v, params_before[k]) for k, v in demo.managed.module.state_dict().items())


# ---- inside ComfyUI (its modules replaced by stand-ins with the same behaviour)


class Interrupted(Exception):
    """Stands in for comfy.model_management.InterruptProcessingException."""


def fake_comfy(models: Path):
    calls = {"load_models_gpu": [], "progress": [], "patchers": []}
    state = {"interrupt": False}
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = Interrupted
    mm.processing_interrupted = lambda: state["interrupt"]

    def throw_if_interrupted():
        if state["interrupt"]:
            state["interrupt"] = False
            raise Interrupted()

    mm.throw_exception_if_processing_interrupted = throw_if_interrupted
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.unet_dtype = lambda device=None, supported_dtypes=(), **_: supported_dtypes[-1]
    mm.module_size = lambda module: sum(p.numel() * p.element_size() for p in module.parameters())
    mm.load_models_gpu = lambda models, force_full_load=False, **_: calls["load_models_gpu"].append(
        ([id(m) for m in models], force_full_load))
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:  # like comfy.utils.ProgressBar: each update runs the global hook, a cancel point
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["progress"].append((value, total))
            throw_if_interrupted()

    utils.ProgressBar = ProgressBar
    patcher_mod = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
            calls["patchers"].append(self)

    patcher_mod.ModelPatcher = ModelPatcher
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils, comfy.model_patcher = mm, utils, patcher_mod
    folder_paths = types.ModuleType("folder_paths")  # the real one's semantics for these functions
    folder_paths.models_dir = str(models)
    folder_paths.folder_names_and_paths = {
        "checkpoints": ([str(models / "checkpoints")], {".safetensors", ".ckpt"}),
        "loopy": (["/yaml/extra/loopy"], set()),  # as if extra_model_paths.yaml had added a folder first
    }

    def add_model_folder_path(name, path, is_default=False):
        paths = folder_paths.folder_names_and_paths.setdefault(name, ([], set()))[0]
        if path in paths:
            paths.remove(path)
        paths.insert(0, path) if is_default else paths.append(path)

    folder_paths.add_model_folder_path = add_model_folder_path
    folder_paths.get_folder_paths = lambda name: list(folder_paths.folder_names_and_paths[name][0])
    modules = {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils,
               "comfy.model_patcher": patcher_mod, "folder_paths": folder_paths}
    return modules, calls, state


def test_inside_comfyui_progress_interrupt_patcher_and_folders(nodes, models, monkeypatch):
    modules, calls, state = fake_comfy(models)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    folders = cg.pack_module("_folders")
    folders.register()
    loopy_paths, extensions = modules["folder_paths"].folder_names_and_paths["loopy"]
    assert loopy_paths[:2] == [str(models / "loopy"), "/yaml/extra/loopy"]  # yaml folders are kept
    assert extensions == {".safetensors", ".sft"}
    if folders.bundled_dir() is not None:
        assert loopy_paths[-1] == str(folders.bundled_dir())
    # the eval-suite's metric weights: models/loopy_eval, which loopy_core.eval.weights then searches
    from loopy_core.eval import weights as eval_weights

    eval_paths, eval_extensions = modules["folder_paths"].folder_names_and_paths[folders.EVAL_KEY]
    assert folders.EVAL_KEY == eval_weights.COMFY_KEY and eval_paths == [str(models / "loopy_eval")]
    assert eval_extensions == {".safetensors", *eval_weights.PICKLE_SUFFIXES}
    assert eval_weights.comfyui_folders()[0] == [str(models / "loopy_eval")]

    loader = nodes["LoopyModelLoader"]
    handle = run(loader, model_name=cg.DEMO_MODEL, base_model="none", dtype="auto", device="auto")[0]
    assert handle.managed.patcher is calls["patchers"][0]
    assert handle.managed.patcher.model.module is handle.managed.module  # a container: comfy's attributes go there
    assert handle.audio_encoder.patcher is calls["patchers"][1]
    features = run(nodes["LoopyAudioEncode"], model=handle, audio=audio(0.5), fps=FPS, max_seconds=0.0)[0]
    motion = run(nodes["LoopyMotionFrames"], model=handle)[0]
    common = dict(model=handle, reference=reference(), audio_features=features, motion=motion, clip_index=0,
                  **sample_widgets())
    calls["load_models_gpu"].clear()
    frames, _ = run(nodes["LoopySampler"], **common)
    assert calls["load_models_gpu"] == [([id(handle.managed.patcher)], True)]
    assert calls["progress"] == [(1, STEPS), (2, STEPS)] and frames.shape[0] == 12

    class InterruptOnFirst(list):
        def append(self, item):
            super().append(item)
            state["interrupt"] = True  # the user presses cancel after the first step

    calls["progress"] = InterruptOnFirst()
    with pytest.raises(Interrupted):
        run(nodes["LoopySampler"], **common)
    assert calls["progress"] == [(1, STEPS)] and state["interrupt"] is False
    calls["progress"] = []
    assert torch.equal(run(nodes["LoopySampler"], **common)[0], frames)

    # interrupt seen by the pipeline's cancel check between steps (the flag set without a progress tick)
    calls["progress"] = []
    state["interrupt"] = True
    with pytest.raises(Interrupted):
        run(nodes["LoopySampler"], **common)
    assert state["interrupt"] is False and calls["progress"] == []
