"""`loopy comfyui-queue` (loopy_core/comfy_queue.py) against a stand-in ComfyUI on 127.0.0.1: the routes and
checks of ComfyUI 0.3.64's `/object_info`, `/upload/image`, `/prompt` and `/history`, with the node definitions of
this pack and of the built-in stand-ins. A queued prompt then runs through the real node classes. (The same queue
runs against a real ComfyUI in test_comfyui_integration.py when COMFYUI_PATH is set.)"""

from __future__ import annotations

import email
import importlib.util
import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from loopy_core.cli import main
from loopy_core.comfy_queue import ComfyClient, find_pairs, queue_folder

_spec = importlib.util.spec_from_file_location("_loopy_tests_comfy_graph", Path(__file__).with_name("comfy_graph.py"))
cg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cg)


class FakeComfyUI(BaseHTTPRequestHandler):
    """ComfyUI's answers to the four routes; `/prompt` validates the prompt as ComfyUI does before queueing it."""

    defs: dict = {}
    input_dir: Path = Path(".")
    prompts: list = []

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/object_info":
            return self._reply(200, self.defs)
        if self.path.startswith("/history/"):
            prompt_id = self.path.split("/")[-1]
            for pid, prompt in self.prompts:
                if pid == prompt_id:
                    saves = {k: n["inputs"]["filename_prefix"] for k, n in prompt.items()
                             if n["class_type"] == "SaveVideo"}
                    outputs = {k: {"images": [{"filename": f"{p.split('/')[-1]}_00001_.mp4",
                                               "subfolder": p.rpartition("/")[0], "type": "output"}]}
                               for k, p in saves.items()}
                    return self._reply(200, {pid: {"status": {"status_str": "success", "completed": True},
                                                   "outputs": outputs}})
            return self._reply(200, {})
        self._reply(404, {})

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/upload/image":
            message = email.message_from_bytes(b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n"
                                               + body)
            fields = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
            assert fields["type"].get_payload() == "input" and fields["overwrite"].get_payload() == "true"
            name = fields["image"].get_filename()
            (self.input_dir / name).write_bytes(fields["image"].get_payload(decode=True))
            return self._reply(200, {"name": name, "subfolder": "", "type": "input"})
        if self.path == "/prompt":
            prompt = json.loads(body)["prompt"]
            errors = self.validate(prompt)
            if errors:
                return self._reply(400, {"error": {"type": "prompt_outputs_failed_validation"}, "node_errors": errors})
            prompt_id = str(uuid.uuid4())
            self.prompts.append((prompt_id, prompt))
            return self._reply(200, {"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}})
        self._reply(404, {})

    def validate(self, prompt: dict) -> dict:
        errors = {}
        for node_id, node in prompt.items():
            node_def = self.defs[node["class_type"]]
            declared = {**node_def["input"]["required"], **node_def["input"]["optional"]}
            problems = [f"missing {n}" for n in node_def["input"]["required"] if n not in node["inputs"]]
            problems += [f"unknown {n}" for n in node["inputs"] if n not in declared]
            for name, value in node["inputs"].items():
                if isinstance(value, list):
                    problems += [] if value[0] in prompt else [f"{name} links to missing node {value[0]}"]
                elif name in ("image", "audio") and node["class_type"] in ("LoadImage", "LoadAudio"):
                    problems += [] if (self.input_dir / value).is_file() else [f"{name} {value!r} not uploaded"]
            if problems:
                errors[node_id] = {"errors": problems, "class_type": node["class_type"]}
        return errors


@pytest.fixture
def comfy(tmp_path):
    FakeComfyUI.defs = cg.object_info_of({**cg.BUILTINS, **cg.load_pack().NODE_CLASS_MAPPINGS})
    FakeComfyUI.input_dir = tmp_path / "comfy_input"
    FakeComfyUI.input_dir.mkdir()
    FakeComfyUI.prompts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfyUI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_folder(folder: Path, names: list[str]) -> Path:
    from PIL import Image

    from loopy_core.video import save_wav

    folder.mkdir()
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        Image.fromarray((rng.random((72, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
        save_wav(folder / f"{name}.wav", cg.speech(0.3, seed=i), 16000)
    (folder / "notes.txt").write_text("not a portrait")
    return folder


def test_queue_a_folder_one_prompt_per_pair_and_the_prompt_runs(comfy, tmp_path, monkeypatch, capsys):
    folder = make_folder(tmp_path / "portraits", ["bob", "alice"])
    assert main(["comfyui-queue", "--folder", str(folder), "--server", comfy, "--set", "LoopyLongVideo.steps=1",
                 "--set", "LoopyLongVideo.seed=7", "--wait"]) == 0
    printed = capsys.readouterr().out
    assert "queued [2/2]" in printed and "success [1/2]" in printed and "loopy_queue/alice_00001_.mp4" in printed
    prompts = [p for _, p in FakeComfyUI.prompts]
    assert len(prompts) == 2
    for prompt, name in zip(prompts, ["alice", "bob"]):  # sorted by name
        by_class = {n["class_type"]: n["inputs"] for n in prompt.values()}
        assert by_class["LoadImage"]["image"] == f"{name}.png" and by_class["LoadAudio"]["audio"] == f"{name}.wav"
        assert by_class["SaveVideo"]["filename_prefix"] == f"loopy_queue/{name}"
        assert by_class["LoopyLongVideo"]["steps"] == 1 and by_class["LoopyLongVideo"]["seed"] == 7
        assert (FakeComfyUI.input_dir / f"{name}.wav").read_bytes() == (folder / f"{name}.wav").read_bytes()

    # what was queued runs: the real nodes on a tiny demo model, the stand-ins reading ComfyUI's input folder
    models = cg.make_model_files(tmp_path / "models")
    monkeypatch.setenv("LOOPY_MODELS_DIR", str(models))
    monkeypatch.setattr(cg.LoadImage, "input_dir", FakeComfyUI.input_dir)
    monkeypatch.setattr(cg.LoadAudio, "input_dir", FakeComfyUI.input_dir)
    cg.SaveVideo.saved.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is faster than two contended ones
    try:
        cg.run_api(prompts[0], {**cg.BUILTINS, **cg.load_pack().NODE_CLASS_MAPPINGS})
    finally:
        torch.set_num_threads(threads)
    (video,) = cg.SaveVideo.saved
    assert video["images"].shape[0] == round(0.3 * 25)


def test_problems_are_found_before_anything_is_uploaded(comfy, tmp_path, capsys):
    folder = make_folder(tmp_path / "portraits", ["alice"])
    (folder / "carol.jpg").write_bytes((folder / "alice.png").read_bytes())
    with pytest.raises(ValueError, match="no audio file with the same name as carol.jpg"):
        find_pairs(folder)
    (folder / "carol.jpg").unlink()
    with pytest.raises(ValueError, match="node class.*LoopySamplr"):
        queue_folder(folder, ComfyClient(comfy), overrides={"LoopySamplr": {"steps": 1}})
    assert not list(FakeComfyUI.input_dir.iterdir()) and FakeComfyUI.prompts == []
    assert main(["comfyui-queue", "--folder", str(folder), "--server", comfy, "--set", "steps=1"]) == 2
    assert "must look like NodeClass.input=value" in capsys.readouterr().err
    # an input the node does not have: ComfyUI refuses the prompt and the command says so
    assert main(["comfyui-queue", "--folder", str(folder), "--server", comfy, "--set", "LoopyLongVideo.stepz=1"]) == 2
    err = capsys.readouterr().err
    assert "ComfyUI answered 400 to" in err and "unknown stepz" in err
    with socket.socket() as s:  # a port with no server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["comfyui-queue", "--folder", str(folder), "--server", f"http://127.0.0.1:{port}"]) == 2
    assert f"no ComfyUI at http://127.0.0.1:{port}" in capsys.readouterr().err
