"""Metric-network weights from the user's disk: find a file, read its tensors without running pickled code, load
strictly.

Every network of `loopy eval-suite` (SyncNet, Inception-v3 for FID, I3D for FVD, Deep3DFaceRecon for E-FID) loads
from the user's disk; nothing is downloaded. A network's file is the path given for it, else the first of its standard
names found in these places, in order (`search_places`, `find_weights`):
1. the `--weights DIR` folder;
2. the folder in `$LOOPY_EVAL_WEIGHTS`;
3. ComfyUI's `models/loopy_eval` folders: `folder_paths.get_folder_paths("loopy_eval")` when ComfyUI's `folder_paths`
   is importable and knows that key (the nodes register it), else `<ComfyUI>/models/loopy_eval` when this package
   sits in `<ComfyUI>/custom_nodes/<package>`;
4. the Hugging Face hub cache (`huggingface_hub.constants.HF_HUB_CACHE`): `models--*/snapshots/*/<name>`.

Formats:
- `.safetensors` (preferred): read with `safetensors`;
- `.pt`, `.pth`, `.model`, `.ckpt`, `.bin` (the community's releases, e.g. `syncnet_v2.model`): read with
  `torch.load(weights_only=True)`, torch's restricted unpickler, which rebuilds only tensors and plain containers
  (dicts, lists, numbers, strings) and refuses any other object, so no code in the file runs. A file that pickles a
  whole model object (not a state dict) is refused with a message; convert such a file once, in an environment you
  trust, to a safetensors state dict.

One-time conversion to safetensors (then keep only the `.safetensors`)::

    python -m loopy_core.eval.weights syncnet_v2.model syncnet_v2.safetensors
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_state_into

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".model", ".ckpt", ".bin")
# a state dict nested one level down; `net_recon`: Deep3DFaceRecon's epoch_20.pth (beside its optimizer's state)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "net_recon")
STRIP_PREFIXES = ("module.", "__S__.")  # DataParallel; syncnet_python's wrapper attribute
ENV_WEIGHTS = "LOOPY_EVAL_WEIGHTS"
COMFY_KEY = "loopy_eval"  # nodes/_folders.py registers the same key
PACKAGE_DIR = Path(__file__).resolve().parents[2]  # the checkout; in ComfyUI: <ComfyUI>/custom_nodes/<package>
HUB_PATTERN = "models--*/snapshots/*"


@dataclass(frozen=True)
class SearchPlace:
    """A place weights files are looked for: what it is (`label`), its folder (None: not there, `note` says why), and
    whether files lie in Hugging Face hub snapshots below it rather than in the folder itself."""

    label: str
    folder: str | None
    hub: bool = False
    note: str = ""

    def candidates(self, name: str) -> list[Path]:
        if self.folder is None:
            return []
        if self.hub:
            return sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(self.folder), HUB_PATTERN,
                                                                  glob.escape(name))))
        return [Path(self.folder) / name]

    def describe(self) -> str:
        if self.folder is None:
            return f"{self.label} ({self.note})"
        where = os.path.join(self.folder, HUB_PATTERN, "") if self.hub else self.folder
        return f"{self.label} {where}" + (f" ({self.note})" if self.note else "")


def comfyui_folders() -> tuple[list[str], str]:
    """ComfyUI's `loopy_eval` folders (step 3 of the module docstring), and how they were found."""
    try:
        import folder_paths  # ComfyUI's own top-level module
    except ImportError:
        folder_paths = None
    known = getattr(folder_paths, "folder_names_and_paths", None) or {}
    if hasattr(folder_paths, "get_folder_paths") and COMFY_KEY in known:
        return list(folder_paths.get_folder_paths(COMFY_KEY)), f"folder_paths {COMFY_KEY!r}"
    if PACKAGE_DIR.parent.name == "custom_nodes":
        return [str(PACKAGE_DIR.parent.parent / "models" / COMFY_KEY)], "beside custom_nodes"
    return [], (f"none: ComfyUI's folder_paths is not importable or lacks {COMFY_KEY!r}, and {PACKAGE_DIR} is not in "
                "a custom_nodes folder")


def hub_cache() -> str | None:
    """The Hugging Face hub cache folder (honours `HF_HUB_CACHE` / `HF_HOME`), None without huggingface_hub."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return os.fspath(constants.HF_HUB_CACHE)


def search_places(weights_dir: str | os.PathLike | None = None) -> list[SearchPlace]:
    """Where weights files are looked for, in order (module docstring), each described for messages."""
    places = [SearchPlace("--weights", os.path.abspath(weights_dir)) if weights_dir else
              SearchPlace("--weights", None, note="not given")]
    env = os.environ.get(ENV_WEIGHTS)
    if not env:
        places.append(SearchPlace(f"${ENV_WEIGHTS}", None, note="not set"))
    else:
        places.append(SearchPlace(f"${ENV_WEIGHTS}", os.path.abspath(env),
                                  note="" if os.path.isdir(env) else "no such folder"))
    comfy, how = comfyui_folders()
    places += [SearchPlace(f"ComfyUI models/{COMFY_KEY}", f) for f in comfy] or [
        SearchPlace(f"ComfyUI models/{COMFY_KEY}", None, note=how)]
    cache = hub_cache()
    places.append(SearchPlace("Hugging Face hub cache", cache, hub=True) if cache else
                  SearchPlace("Hugging Face hub cache", None, note="huggingface_hub is not installed"))
    return places


def find_weights(filenames: Iterable[str], places: list[SearchPlace]) -> tuple[str, SearchPlace] | None:
    """The first file of `filenames` in the first place holding one (a place's own order of names), with the place."""
    for place in places:
        for name in filenames:
            hit = next((p for p in place.candidates(name) if p.is_file()), None)
            if hit is not None:
                return str(hit), place
    return None


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a weights file as a flat `{name: tensor}` on the CPU (formats in the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path} (looked in {os.path.dirname(os.path.abspath(path))})")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    elif suffix in PICKLE_SUFFIXES:
        import pickle

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{what} file {path} holds more than tensors (a pickled object), so it is not loaded; convert it once "
                f"to a safetensors state dict where you trust the file (see loopy_core/eval/weights.py): {e}"
            ) from None
    else:
        raise ValueError(f"{what} file {path} has an unknown suffix {suffix!r}; expected .safetensors or one of "
                         f"{', '.join(PICKLE_SUFFIXES)}")
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 4:
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} file {path} is not a state dict of tensors (got {type(state).__name__})")
    out = {}
    for name, tensor in state.items():
        for prefix in STRIP_PREFIXES:
            name = name.removeprefix(prefix)
        out[name] = tensor
    return out


def load_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, ignore: Iterable[str] = ()
) -> torch.nn.Module:
    """Load `state` into `model` strictly (missing, unexpected and mis-shaped keys are named, with `source`).

    Keys under a prefix in `ignore` (e.g. a classifier head the metric does not use) are dropped first; BatchNorm's
    `num_batches_tracked` counters, which old files lack, may be absent. Returns `model` in eval mode."""
    ignore = tuple(ignore)
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked") and name not in state:
            state[name] = value
    load_state_into(model, state, source)
    return model.eval()


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Write the tensors of `src` (any format `read_state_dict` reads) to `dst` as safetensors; returns the count."""
    from safetensors.torch import save_file

    state = read_state_dict(src)
    save_file({k: v.contiguous() for k, v in state.items()}, os.fspath(dst), metadata={"source": os.fspath(src)})
    return len(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a metric network's weights to safetensors, once.")
    parser.add_argument("src", help="weights file (.model, .pth, .pt, .ckpt, .bin or .safetensors)")
    parser.add_argument("dst", help="output .safetensors file")
    args = parser.parse_args(argv)
    count = convert_to_safetensors(args.src, args.dst)
    print(f"wrote {args.dst}: {count} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
