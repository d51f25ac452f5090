"""Metric-network weights from the user's disk: read a file's tensors without running pickled code, load strictly.

Every network of `loopy eval-suite` (SyncNet, Inception-v3 for FID, I3D for FVD) loads from a path the user gives;
nothing is downloaded. Formats:
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
import logging
import os
import sys
from collections.abc import Iterable

import torch

from ..checkpoint import load_state_into

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".model", ".ckpt", ".bin")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")  # a state dict nested one level down
STRIP_PREFIXES = ("module.", "__S__.")  # DataParallel; syncnet_python's wrapper attribute


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
