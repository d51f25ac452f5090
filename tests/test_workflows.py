"""The shipped workflows (UI format 0.4): node types, links and widget values check out against the node
definitions, and each graph runs through the node functions on a tiny model, giving as many frames as the audio."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("_loopy_tests_comfy_graph", Path(__file__).with_name("comfy_graph.py"))
cg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cg)

NAMES = ["loopy_clip_chain.json", "loopy_demo.json", "loopy_sd15.json"]
FRONTEND_ONLY = cg.FRONTEND_ONLY
FILE_WIDGETS = {  # combos whose options are the user's files: the workflows must use the documented names
    ("LoadImage", "image"): {cg.FACE},
    ("LoadAudio", "audio"): {cg.SPEECH},
    ("LoopyModelLoader", "model_name"): {cg.DEMO_MODEL, cg.SD15_MODEL},
    ("LoopyModelLoader", "base_model"): {"none", f"checkpoints/{cg.SD15_BASE_FILE}"},
    ("LoopyAudioEncoderLoader", "encoder_name"): {cg.WAV2VEC2},
}
SPEECH_SECONDS = 1.6  # 40 frames at 25 fps; the clip chain uses the first 1.44 s (3 clips)
EXPECTED_FRAMES = {"loopy_demo.json": 40, "loopy_sd15.json": 40, "loopy_clip_chain.json": 36}
# frame size: the demo pastes the crop back into the 72x80 input photo; the others give the model's 64x64 square
EXPECTED_SIZE = {"loopy_demo.json": (80, 72), "loopy_sd15.json": (64, 64), "loopy_clip_chain.json": (64, 64)}


@pytest.fixture(scope="module")
def classes():
    return {**cg.load_pack().NODE_CLASS_MAPPINGS, **cg.BUILTINS}


@pytest.fixture(scope="module")
def defs(classes):
    return cg.object_info_of(classes)


def test_the_three_workflows_ship():
    assert sorted(p.name for p in cg.WORKFLOWS) == NAMES


def _types(type_string: str) -> set[str]:
    return {t.strip() for t in type_string.split(",")}


@pytest.mark.parametrize("name", NAMES)
def test_workflow_is_well_formed(name, defs):
    wf = cg.read_workflow(cg.ROOT / "workflows" / name)
    assert wf["version"] == 0.4
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and max(nodes) <= wf["last_node_id"]
    assert all(link[0] <= wf["last_link_id"] for link in wf["links"])
    for node in wf["nodes"]:
        assert node["type"] in defs or node["type"] in FRONTEND_ONLY, f"unknown node type {node['type']!r}"
    # links: [id, from node, from slot, to node, to slot, type], agreeing with both ends and the definitions
    for link_id, src, src_slot, dst, dst_slot, link_type in wf["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == link_type == defs[nodes[src]["type"]]["output"][src_slot]
        spec = {**defs[nodes[dst]["type"]]["input"]["required"], **defs[nodes[dst]["type"]]["input"]["optional"]}
        assert inp["name"] in spec, f"{nodes[dst]['type']} has no input {inp['name']!r}"
        assert link_type in _types(cg.input_kind(spec[inp["name"]])), (name, link_id, link_type, inp["name"])
    for node in wf["nodes"]:
        for out in node.get("outputs", []):
            for link_id in out["links"] or []:
                assert any(link[0] == link_id for link in wf["links"])
        if node["type"] in FRONTEND_ONLY:
            continue
        node_def = defs[node["type"]]
        linked = {i["name"] for i in node["inputs"] if i.get("link") is not None}
        # every required socket is connected; every widget value is valid
        for input_name, spec in node_def["input"]["required"].items():
            if not cg.is_widget(spec):
                assert input_name in linked, f"{node['type']}.{input_name} is not connected in {name}"
        for input_name, value in cg.widget_values(node, node_def).items():
            spec = {**node_def["input"]["required"], **node_def["input"]["optional"]}[input_name]
            kind, options = cg.input_kind(spec), (spec[1] if len(spec) > 1 else {})
            if (node["type"], input_name) in FILE_WIDGETS:
                assert value in FILE_WIDGETS[(node["type"], input_name)], (node["type"], input_name, value)
            elif kind == "COMBO":
                assert value in spec[0], (node["type"], input_name, value)
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and options["min"] <= value <= options["max"], (
                    node["type"], input_name, value)
            elif kind == "STRING":
                assert isinstance(value, str)
    # the graph ends in Create Video -> Save Video
    save = [n for n in wf["nodes"] if n["type"] == "SaveVideo"]
    assert len(save) == 1
    (video_link,) = [i["link"] for i in save[0]["inputs"] if i["name"] == "video"]
    assert nodes[next(link[1] for link in wf["links"] if link[0] == video_link)]["type"] == "CreateVideo"


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflows")
    cg.make_model_files(root / "models")
    cg.make_inputs(root / "input", SPEECH_SECONDS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPY_MODELS_DIR", str(root / "models"))
        mp.setattr(cg.LoadImage, "input_dir", root / "input")
        mp.setattr(cg.LoadAudio, "input_dir", root / "input")
        yield root


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_and_makes_a_frame_per_audio_frame(name, environment, classes, defs):
    prompt = cg.to_api(cg.read_workflow(cg.ROOT / "workflows" / name), defs)
    assert {n["class_type"] for n in prompt.values()} >= {"CreateVideo", "SaveVideo"}
    for node in prompt.values():  # fast: one step per clip, guidance reduced to one branch
        if node["class_type"] in ("LoopySampler", "LoopyLongVideo"):
            node["inputs"].update(steps=1, audio_cfg=1.0, ref_cfg=1.0)
    cg.SaveVideo.saved.clear()
    cg.run_api(prompt, classes)
    (video,) = cg.SaveVideo.saved
    frames, fps, audio = video["images"], video["fps"], video["audio"]
    assert frames.shape == (EXPECTED_FRAMES[name], *EXPECTED_SIZE[name], 3) and frames.dtype == torch.float32
    assert fps == 25.0
    seconds = audio["waveform"].shape[-1] / audio["sample_rate"]
    if name == "loopy_clip_chain.json":  # the chain cuts the audio to its 3 clips; Save Video trims the track
        assert frames.shape[0] == 3 * 12 == round(1.44 * fps)
    else:
        assert frames.shape[0] == math.ceil(seconds * fps - 1e-9) == math.ceil(SPEECH_SECONDS * fps)


def test_demo_workflow_runs_the_bundled_demo_model(tmp_path, classes, defs, monkeypatch):
    """No model files at all: the demo graph finds the bundled model (log-mel audio, no encoder to load). A
    non-square photo with a face comes back at its own size (rounded down to even), the photo outside the face."""
    import numpy as np
    from PIL import Image

    from loopy_core.image import load_image

    (tmp_path / "models").mkdir()
    cg.make_inputs(tmp_path / "input", SPEECH_SECONDS)
    photo = np.full((121, 161, 3), 0.6, np.float32)
    photo[30:94, 70:134] = load_image(cg.ROOT / "loopy_core" / "assets" / "demo" / "portrait.png")
    Image.fromarray((photo * 255).round().astype(np.uint8)).save(tmp_path / "input" / cg.FACE)
    monkeypatch.setenv("LOOPY_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(cg.LoadImage, "input_dir", tmp_path / "input")
    monkeypatch.setattr(cg.LoadAudio, "input_dir", tmp_path / "input")
    prompt = cg.to_api(cg.read_workflow(cg.ROOT / "workflows" / "loopy_demo.json"), defs)
    for node in prompt.values():
        if node["class_type"] == "LoopyLongVideo":
            node["inputs"].update(steps=1)
    cg.SaveVideo.saved.clear()
    cg.run_api(prompt, classes)
    (video,) = cg.SaveVideo.saved
    frames = video["images"]
    assert frames.shape == (math.ceil(SPEECH_SECONDS * 25), 120, 160, 3)
    assert (frames[:, :8, :8] - 0.6).abs().max() < 0.01  # far from the face: the photo itself
