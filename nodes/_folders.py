"""Model folders of the nodes: which files a loader lists, and where a chosen name resolves (only inside them).

Keys (ComfyUI's `folder_paths` names):
- `loopy`: Loopy checkpoints. Registered with `folder_paths.add_model_folder_path` as `models/loopy` (first), so
  `extra_model_paths.yaml` entries for `loopy` keep working; the package's bundled models
  (`loopy_core/assets/**/*.safetensors`, e.g. `demo/loopy_demo.safetensors`) are a further folder of the same key, so
  they are listed and load with no download;
- `checkpoints` (single-file SD1.5) and `diffusers` (folders with `model_index.json`): the SD1.5 base;
- `audio_encoders`: wav2vec2 as transformers folders (`config.json` + weights);
- `loopy_eval`: the metric networks of `loopy eval-suite` (SyncNet, Inception-v3, I3D, Deep3DFaceRecon) under their
  standard names. Registered as `models/loopy_eval` (first) so `extra_model_paths.yaml` entries work; no node lists
  them: `loopy_core.eval.weights` searches these folders when it runs inside ComfyUI's process, and
  `<ComfyUI>/models/loopy_eval` when run from a checkout in `custom_nodes`.
Outside ComfyUI the same keys are subfolders of `$LOOPY_MODELS_DIR` (default `./models`), plus the bundled folder.

A name is relative to one of its key's folders; names with `..` parts or absolute paths are refused.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

LOOPY_KEY = "loopy"
EVAL_KEY = "loopy_eval"  # loopy_core.eval.weights.COMFY_KEY (not imported here: it imports torch)
EVAL_EXTENSIONS = {".safetensors", ".pt", ".pth", ".model", ".ckpt", ".bin"}  # what eval.weights reads
MODEL_EXTENSIONS = {".safetensors", ".sft"}  # Loopy checkpoints are safetensors only
BASE_EXTENSIONS = MODEL_EXTENSIONS | {".ckpt", ".pt", ".pth", ".bin"}  # SD1.5 single files (read weights-only)
ENV_MODELS_DIR = "LOOPY_MODELS_DIR"
NONE = "none"
BASE_KEYS = ("checkpoints", "diffusers")


def _folder_paths():
    try:
        import folder_paths  # ComfyUI's own top-level module
    except ImportError:
        return None
    return folder_paths if hasattr(folder_paths, "get_folder_paths") else None


def bundled_dir() -> Path | None:
    """`loopy_core/assets`, found without importing anything heavy."""
    spec = importlib.util.find_spec("loopy_core")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def register() -> None:
    """Register the `loopy` and `loopy_eval` keys with ComfyUI (the verified pattern: keeps yaml paths, filters
    extensions)."""
    fp = _folder_paths()
    if fp is None:
        return
    for key, extensions in ((LOOPY_KEY, MODEL_EXTENSIONS), (EVAL_KEY, EVAL_EXTENSIONS)):
        fp.add_model_folder_path(key, os.path.join(fp.models_dir, key), is_default=True)
        fp.folder_names_and_paths[key][1].update(extensions)
    bundled = bundled_dir()
    if bundled is not None and str(bundled) not in fp.get_folder_paths(LOOPY_KEY):
        fp.add_model_folder_path(LOOPY_KEY, str(bundled))


def folders(key: str) -> list[str]:
    """The folders searched for `key`, in order."""
    fp = _folder_paths()
    if fp is not None:
        if key == LOOPY_KEY and key not in fp.folder_names_and_paths:
            register()
        return list(fp.get_folder_paths(key)) if key in fp.folder_names_and_paths else []
    root = Path(os.environ.get(ENV_MODELS_DIR) or Path.cwd() / "models")
    paths = [str(root / key)]
    if key == LOOPY_KEY and bundled_dir() is not None:
        paths.append(str(bundled_dir()))
    return paths


def check_name(name: str, what: str = "model") -> str:
    """Refuse names that could leave the model folders: absolute paths and `..` parts."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"no {what} chosen (empty name)")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{what} {name!r} is an absolute path; choose a name from the list")
    if ".." in re.split(r"[\\/]", name):
        raise ValueError(f"{what} {name!r} contains '..'; names must stay inside the model folders")
    return name


def list_files(key: str, extensions=MODEL_EXTENSIONS) -> list[str]:
    """Model files under the folders of `key` (searched recursively), as relative names with `/`."""
    names = set()
    for folder in folders(key):
        root = Path(folder)
        if root.is_dir():
            for path in root.rglob("*"):
                if path.suffix.lower() in extensions and path.is_file():
                    names.add(path.relative_to(root).as_posix())
    return sorted(names)


def list_dirs(key: str, marker: str) -> list[str]:
    """Model folders (those holding `marker`, e.g. `config.json`) under the folders of `key`."""
    names = set()
    for folder in folders(key):
        root = Path(folder)
        if root.is_dir():
            names.update(p.parent.relative_to(root).as_posix() for p in root.rglob(marker) if p.parent != root)
    return sorted(names)


def resolve(key: str, name: str, what: str = "model") -> Path:
    """The file or folder `name` inside the folders of `key`; FileNotFoundError names the folders searched."""
    check_name(name, what)
    searched = folders(key)
    for folder in searched:
        path = Path(folder) / name
        if path.exists():
            return path
    raise FileNotFoundError(f"{what} {name!r} not found in the {key!r} model folders: {searched}")


def base_choices() -> list[str]:
    """`none`, then SD1.5 bases as `checkpoints/<file>` and `diffusers/<folder>`."""
    return [NONE] + [f"checkpoints/{n}" for n in list_files("checkpoints", BASE_EXTENSIONS)] + [
        f"diffusers/{n}" for n in list_dirs("diffusers", "model_index.json")
    ]


def resolve_base(choice: str) -> Path | None:
    if choice == NONE:
        return None
    key, _, name = choice.partition("/")
    if key not in BASE_KEYS or not name:
        raise ValueError(f"base model {choice!r} must be 'none', 'checkpoints/<file>' or 'diffusers/<folder>'")
    return resolve(key, name, "base model")
