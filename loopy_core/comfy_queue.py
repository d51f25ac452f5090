"""Queue many videos in a running ComfyUI through its HTTP API: a shipped UI workflow becomes the API prompt that
`POST /prompt` runs, and each portrait + speech pair of a folder gets one prompt (its files uploaded first).

    loopy comfyui-queue --folder DIR [--workflow workflows/loopy_demo.json] [--server http://127.0.0.1:8188]
        [--set LoopyLongVideo.steps=10 ...] [--wait]
    python -m loopy_core.comfy_queue ...        (the same command; works from a custom_nodes checkout too)

ComfyUI's own queue runs the prompts one after another with the model loaded once; this module only talks HTTP
(stdlib `urllib`) and imports nothing of ComfyUI. Pairs: `face.png` goes with the audio file of the same stem
(`face.wav`, `face.mp3`, ...). Each prompt's Save Video prefix is `loopy_queue/<stem>`, so the videos land in
ComfyUI's `output/loopy_queue/`.

UI -> API conversion (`to_api`) follows the frontend's `graphToPrompt`: widget values are positional, in the order
of the node definition's widget inputs (required, then optional); a seed's `control_after_generate` value is
skipped; linked inputs become `[origin_id, origin_slot]`; muted/bypassed and frontend-only nodes are left out. The
node definitions come from the server's `/object_info`, so the conversion matches the ComfyUI that runs it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8188"
DEFAULT_WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "loopy_demo.json"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # virtual nodes of the frontend: never sent to the server
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac"}
OUTPUT_FOLDER = "loopy_queue"


# ---- 1. UI workflow -> API prompt


def input_kind(spec) -> str:
    """The socket/widget type of one input definition: a type name, or COMBO for a list of options."""
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def is_widget(spec) -> bool:
    options = spec[1] if len(spec) > 1 else {}
    return input_kind(spec) in WIDGET_TYPES and not options.get("forceInput")


def widget_inputs(node_def: dict) -> list[tuple[str, list]]:
    """The widget inputs of a node definition, in widget order (required, then optional)."""
    out = []
    for section in ("required", "optional"):
        order = node_def.get("input_order", {}).get(section) or list(node_def["input"].get(section, {}))
        for name in order:
            spec = node_def["input"][section][name]
            if is_widget(spec):
                out.append((name, spec))
    return out


def widget_values(node: dict, node_def: dict) -> dict:
    """Map a UI node's positional `widgets_values` to input names; skips the frontend's extra values (the
    `control_after_generate` value after a seed; upload widgets come last and are ignored)."""
    values = list(node.get("widgets_values") or [])
    named, i = {}, 0
    for name, spec in widget_inputs(node_def):
        if i >= len(values):
            break
        named[name] = values[i]
        i += 1
        options = spec[1] if len(spec) > 1 else {}
        if options.get("control_after_generate"):
            i += 1
    return named


def to_api(workflow: dict, defs: dict) -> dict:
    """UI workflow (version 0.4) -> API prompt `{id: {"class_type", "inputs"}}`; `defs` in `/object_info` form."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in FRONTEND_ONLY:
            continue
        if node["type"] not in defs:
            raise ValueError(f"the workflow uses node type {node['type']!r}, which this ComfyUI does not have "
                             "(is comfyui-loopy installed in its custom_nodes?)")
        node_def = defs[node["type"]]
        inputs = widget_values(node, node_def)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """["LoopyLongVideo.steps=10", ...] -> {"LoopyLongVideo": {"steps": 10}} (values read as JSON, else text)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, text = item.partition("=")
        class_type, dot, name = target.partition(".")
        if not (sep and dot and class_type and name):
            raise ValueError(f"--set {item!r} must look like NodeClass.input=value, e.g. LoopyLongVideo.steps=10")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.setdefault(class_type, {})[name] = value
    return out


def prompt_for_pair(template: dict, image: str, audio: str, prefix: str, overrides: dict | None = None) -> dict:
    """A copy of the API prompt `template` that loads `image` and `audio` (names in ComfyUI's input folder) and saves
    under `prefix`; `overrides` set inputs by node class."""
    prompt = json.loads(json.dumps(template))
    seen = set()
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "LoadImage":
            inputs["image"] = image
        elif kind == "LoadAudio":
            inputs["audio"] = audio
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = prefix
        for name, value in (overrides or {}).get(kind, {}).items():
            inputs[name] = value
            seen.add(kind)
    needed = {"LoadImage", "LoadAudio", "SaveVideo"} - {n["class_type"] for n in prompt.values()}
    if needed:
        raise ValueError(f"the workflow has no {', '.join(sorted(needed))} node; queue a workflow that loads an "
                         "image and an audio file and saves a video, such as workflows/loopy_demo.json")
    unused = set(overrides or {}) - seen
    if unused:
        raise ValueError(f"--set names node class(es) {', '.join(sorted(unused))} that the workflow does not have")
    return prompt


# ---- 2. the folder


def find_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(portrait, speech) pairs of `folder` by file stem, sorted; a portrait without its audio file is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    audio = {p.stem: p for p in files if p.suffix.lower() in AUDIO_SUFFIXES}
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    lonely = [p.name for p in images if p.stem not in audio]
    if lonely:
        raise ValueError(f"no audio file with the same name as {', '.join(lonely)} in {str(folder)!r}; give each "
                         f"portrait its speech as <name>{{{','.join(sorted(AUDIO_SUFFIXES))}}}")
    if not images:
        raise ValueError(f"no portraits ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(folder)!r}")
    return [(p, audio[p.stem]) for p in images]


# ---- 3. HTTP


class ComfyClient:
    """The few ComfyUI routes a queue needs: `/object_info`, `/upload/image`, `/prompt`, `/history/{id}`."""

    def __init__(self, url: str = DEFAULT_SERVER, timeout: float = 30.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def _open(self, request: urllib.request.Request | str) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            path = request if isinstance(request, str) else request.full_url
            detail = e.read().decode(errors="replace")[:2000]
            raise RuntimeError(f"ComfyUI answered {e.code} to {path}: {detail}") from e
        except urllib.error.URLError as e:
            raise ConnectionError(f"no ComfyUI at {self.url} ({e.reason}); start it, or pass its address") from e

    def get(self, path: str) -> Any:
        return json.loads(self._open(self.url + path))

    def post(self, path: str, payload: dict) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        body = self._open(request)
        return json.loads(body) if body else None

    def upload(self, path: str | Path) -> str:
        """Upload a file to ComfyUI's input folder (any file type) and return the name LoadImage/LoadAudio take."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        fields = [("type", "input"), ("overwrite", "true")]
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields
        )
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        body += path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + "/upload/image", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        reply = json.loads(self._open(request))
        return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]

    def submit(self, prompt: dict, workflow: dict | None = None) -> str:
        """Queue one API prompt (with the UI workflow in its metadata, as the frontend does); its prompt id."""
        extra = {"extra_pnginfo": {"workflow": workflow}} if workflow else {}
        reply = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4()), "extra_data": extra})
        if reply.get("node_errors"):
            raise RuntimeError(f"ComfyUI refused the prompt: {json.dumps(reply['node_errors'])[:2000]}")
        return reply["prompt_id"]

    def check_alive(self) -> None:
        """Called while waiting; a subclass that owns the server process raises when it has died."""

    def wait(self, prompt_id: str, timeout: float = 3600.0, poll: float = 0.5) -> dict:
        """The prompt's `/history` entry once it has finished (`status_str` "success" or "error")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            self.check_alive()
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:g} s")


def queue_folder(
    folder: str | Path,
    client: ComfyClient,
    workflow: str | Path = DEFAULT_WORKFLOW,
    overrides: dict | None = None,
    wait: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Upload each pair of `folder` and queue one prompt per pair; with `wait`, also wait for each to finish.

    Everything that can be checked is checked before the first upload: the pairs, the workflow and its node types
    on this server, the overrides. Returns one `{"image", "audio", "prompt_id"[, "status", "outputs"]}` per pair."""
    pairs = find_pairs(folder)
    ui = json.loads(Path(workflow).read_text())
    template = to_api(ui, client.get("/object_info"))
    prompt_for_pair(template, "", "", "", overrides)  # a workflow or --set that can't work fails before uploading
    queued = []
    for image, audio in pairs:
        prompt = prompt_for_pair(template, client.upload(image), client.upload(audio), f"{OUTPUT_FOLDER}/{image.stem}",
                                 overrides)
        queued.append({"image": str(image), "audio": str(audio), "prompt_id": client.submit(prompt, ui)})
        (callback or (lambda e: None))({"event": "queued", **queued[-1], "index": len(queued), "total": len(pairs)})
    if wait:
        for k, job in enumerate(queued):
            entry = client.wait(job["prompt_id"])
            saved = [item for out in entry.get("outputs", {}).values() for item in out.get("images", [])]
            job.update(status=entry["status"]["status_str"], outputs=saved)
            (callback or (lambda e: None))({"event": "finished", **job, "index": k + 1, "total": len(queued)})
    return queued


def main(argv: list[str] | None = None) -> int:
    """`python -m loopy_core.comfy_queue ...`: `loopy comfyui-queue ...`."""
    import sys

    from .cli import main as cli_main

    return cli_main(["comfyui-queue", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
