"""A real ComfyUI: the package installed into custom_nodes, each workflow run over HTTP, cancel, and the real
frontend loading each UI workflow in headless Chromium.

Skipped unless COMFYUI_PATH points at a ComfyUI checkout. ComfyUI runs on 127.0.0.1 with --cpu and a temporary
--base-directory (its own custom_nodes, models, input and output), so the checkout is left untouched; the package
is symlinked into that custom_nodes folder as `comfyui-loopy`. COMFYUI_PYTHON picks the interpreter that has
ComfyUI's requirements (default: this one). The browser test also needs Chromium (`chromium` on PATH, or CHROMIUM).

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/comfy-venv/bin/python python -m pytest tests/test_comfyui_integration.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from loopy_core.comfy_queue import ComfyClient, queue_folder


def _helper(name: str):
    spec = importlib.util.spec_from_file_location(f"_loopy_tests_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cg = _helper("comfy_graph")
cdp = _helper("browser_cdp")

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI_PATH, reason="set COMFYUI_PATH to a ComfyUI checkout to run these")

PACK = "comfyui-loopy"
SPEECH_SECONDS = 1.6
EXPECTED_FRAMES = {"loopy_demo.json": 40, "loopy_sd15.json": 40, "loopy_clip_chain.json": 36}
# the demo pastes the crop back into the 72x80 input photo; the others give the model's 64x64 square
EXPECTED_SIZE = {"loopy_demo.json": (80, 72), "loopy_sd15.json": (64, 64), "loopy_clip_chain.json": (64, 64)}
STEPS = 3  # per clip: enough to exercise the sampler, quick on a CPU
START_TIMEOUT = 300
RUN_TIMEOUT = 600


class Server(ComfyClient):
    """The shipped HTTP client (`loopy_core.comfy_queue`) on the ComfyUI this module starts."""

    def __init__(self, url: str, base: Path, proc: subprocess.Popen, log: Path):
        super().__init__(url)
        self.base, self.proc, self.log = base, proc, log

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def check_alive(self) -> None:
        assert self.proc.poll() is None, f"ComfyUI exited:\n{self.log_tail()}"

    def wait(self, prompt_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        try:
            return super().wait(prompt_id, timeout)
        except TimeoutError as e:
            raise TimeoutError(f"{e}:\n{self.log_tail()}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(cg.ROOT, target_is_directory=True)
    cg.make_model_files(base / "models")
    cg.make_inputs(base / "input", SPEECH_SECONDS)
    port = _free_port()
    log = base / "comfyui.log"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--disable-auto-launch"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=COMFYUI_PATH, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(f"http://127.0.0.1:{port}", base, proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"ComfyUI exited at start:\n{srv.log_tail()}"
            try:
                srv.get("/system_stats")
                break
            except (ConnectionError, OSError):
                assert time.monotonic() < deadline, f"ComfyUI did not start:\n{srv.log_tail()}"
                time.sleep(1)
        text = log.read_text(errors="replace")
        assert not [line for line in text.splitlines() if "IMPORT FAILED" in line and PACK in line], srv.log_tail()
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_nodes_registered_and_the_stand_ins_match_the_builtins(server, object_info):
    ours = cg.load_pack().NODE_CLASS_MAPPINGS
    for name in ours:
        assert name in object_info, f"{name} not registered:\n{server.log_tail()}"
        assert object_info[name]["category"] == "Loopy"
        assert object_info[name]["python_module"] == f"custom_nodes.{PACK}"
    loader = object_info["LoopyModelLoader"]["input"]["required"]
    assert {cg.DEMO_MODEL, cg.SD15_MODEL} <= set(loader["model_name"][0])
    assert f"checkpoints/{cg.SD15_BASE_FILE}" in loader["base_model"][0]
    assert object_info["LoopyAudioEncoderLoader"]["input"]["required"]["encoder_name"][0] == [cg.WAV2VEC2]
    for name, cls in cg.BUILTINS.items():  # the unit tests' stand-ins declare what the real nodes declare
        real, stub = object_info[name], cg.object_info_of({name: cls})[name]
        assert real["output"] == stub["output"], name
        for section in ("required", "optional"):
            real_inputs = real["input"].get(section, {})
            assert list(real_inputs) == list(stub["input"][section]), (name, section)
            for input_name, spec in stub["input"][section].items():
                assert cg.input_kind(real_inputs[input_name]) == cg.input_kind(spec), (name, input_name)
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get(PACK, [])) == ["loopy_clip_chain", "loopy_demo", "loopy_sd15"]


def _api_prompt(name: str, object_info: dict, steps: int = STEPS, seed: int | None = None) -> tuple[dict, dict]:
    workflow = cg.read_workflow(cg.ROOT / "workflows" / name)
    prompt = cg.to_api(workflow, object_info)
    for node in prompt.values():
        if node["class_type"] in ("LoopySampler", "LoopyLongVideo"):
            node["inputs"]["steps"] = steps
            if seed is not None:
                node["inputs"]["seed"] = seed
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = f"loopy_test/{Path(name).stem}"
    return prompt, workflow


@pytest.mark.parametrize("name", sorted(EXPECTED_FRAMES))
def test_workflow_runs_over_http_and_saves_an_mp4(server, object_info, name):
    from loopy_core.video import read_video

    prompt, workflow = _api_prompt(name, object_info)
    result = server.wait(server.submit(prompt, workflow))
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000]
    saved = [item for out in result["outputs"].values() for item in out.get("images", [])]
    assert len(saved) == 1 and saved[0]["filename"].endswith(".mp4"), result["outputs"]
    path = server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    video = read_video(path)
    frames = EXPECTED_FRAMES[name]
    assert video.frames.shape == (frames, *EXPECTED_SIZE[name], 3)
    assert video.fps == pytest.approx(25.0)
    assert video.audio is not None
    assert abs(video.audio.shape[-1] / video.sample_rate - frames / 25.0) < 0.1  # AAC padding aside


def test_cancel_stops_promptly_and_the_next_prompt_runs(server, object_info):
    prompt, workflow = _api_prompt("loopy_demo.json", object_info, steps=200, seed=12345)
    prompt_id = server.submit(prompt, workflow)
    deadline = time.monotonic() + 120
    while not server.get("/queue")["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2.0)  # well into the sampling (models are cached by the earlier tests)
    asked = time.monotonic()
    server.post("/interrupt", {})
    result = server.wait(prompt_id, timeout=120)
    stopped_after = time.monotonic() - asked
    assert result["status"]["status_str"] == "error"
    events = [message[0] for message in result["status"]["messages"]]
    assert "execution_interrupted" in events, result["status"]
    assert stopped_after < 15, f"took {stopped_after:.1f} s to stop"
    prompt, workflow = _api_prompt("loopy_demo.json", object_info, steps=2, seed=54321)
    assert server.wait(server.submit(prompt, workflow))["status"]["status_str"] == "success"


def test_frontend_loads_every_workflow_with_known_nodes_and_intact_links(server, object_info):
    executable = cdp.find_chromium()
    if executable is None:
        pytest.skip("no Chromium (install Debian's chromium, or set CHROMIUM)")
    browser = cdp.Browser(executable)
    try:
        browser.open(server.url + "/")
        browser.wait_for("window.app && window.app.graph && window.LiteGraph && "
                         "Object.keys(LiteGraph.registered_node_types).length > 50", timeout=120)
        for path in cg.WORKFLOWS:
            workflow = cg.read_workflow(path)
            report = browser.evaluate(f"({CHECK_JS})({json.dumps(workflow)})")
            assert report["missing_types"] == [], (path.name, report)
            assert report["broken_links"] == [], (path.name, report)
            assert (report["nodes"], report["links"]) == (len(workflow["nodes"]), len(workflow["links"])), report
            expected = cg.to_api(workflow, object_info)
            assert set(report["prompt"]) == set(expected), path.name
            for node_id, node in expected.items():  # our UI -> API conversion agrees with the frontend's
                got = report["prompt"][node_id]
                assert got["class_type"] == node["class_type"]
                extra = set(got["inputs"]) - set(node["inputs"])
                assert extra <= {"audioUI", "upload"}, (path.name, node_id, extra)
                assert {k: got["inputs"][k] for k in node["inputs"]} == node["inputs"], (path.name, node_id)
    finally:
        browser.close()


CHECK_JS = """async (workflow) => {
  await app.loadGraphData(workflow);
  const graph = app.graph;
  const nodes = graph._nodes || graph.nodes;
  const missing_types = nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
  const links = graph.links instanceof Map ? [...graph.links.values()] : Object.values(graph.links || {});
  const broken_links = [];
  for (const link of links) {
    if (!link) continue;
    const from = graph.getNodeById(link.origin_id), to = graph.getNodeById(link.target_id);
    const out = from && from.outputs[link.origin_slot], inp = to && to.inputs[link.target_slot];
    const ok = out && inp && (out.links || []).includes(link.id) && inp.link === link.id &&
               LiteGraph.isValidConnection(out.type, inp.type);
    if (!ok) broken_links.push([link.id, link.origin_id, link.origin_slot, link.target_id, link.target_slot]);
  }
  for (const node of nodes) for (const inp of node.inputs || [])
    if (inp.link != null && !links.some(l => l && l.id === inp.link))
      broken_links.push(["dangling", node.id, inp.name]);
  const prompt = (await app.graphToPrompt()).output;
  return {missing_types, broken_links, nodes: nodes.length, links: links.filter(Boolean).length, prompt};
}"""


def test_a_folder_queued_through_the_http_api_makes_one_video_per_pair(server, tmp_path):
    """`loopy comfyui-queue`'s library: the shipped demo workflow, one prompt per portrait + speech pair."""
    from PIL import Image

    from loopy_core.video import read_video, save_wav

    folder = tmp_path / "portraits"
    folder.mkdir()
    lengths = {"alice": 0.6, "bob": 1.0}
    for i, (name, seconds) in enumerate(lengths.items()):
        rng = np.random.default_rng(i)
        Image.fromarray((rng.random((80, 72, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
        save_wav(folder / f"{name}.wav", cg.speech(seconds, seed=i), 16000)
    jobs = queue_folder(folder, server, overrides={"LoopyLongVideo": {"steps": STEPS}}, wait=True)
    assert [Path(job["image"]).stem for job in jobs] == ["alice", "bob"]
    for job, seconds in zip(jobs, lengths.values()):
        assert job["status"] == "success", job
        (saved,) = job["outputs"]
        assert saved["subfolder"] == "loopy_queue" and saved["filename"].startswith(Path(job["image"]).stem)
        video = read_video(server.base / "output" / saved["subfolder"] / saved["filename"])
        assert video.frames.shape[0] == round(seconds * 25)
