"""The one place where the nodes touch ComfyUI: optional imports, progress, cancel, devices and `ModelPatcher`.

Every ComfyUI module is imported lazily and optionally, so the nodes also run outside ComfyUI (tests, scripts):
- progress goes to `comfy.utils.ProgressBar` (whose hook is also ComfyUI's cancel point), else to tqdm;
- cancel is `comfy.model_management.processing_interrupted()`, checked by the pipeline between steps; outside
  ComfyUI it is the `CANCEL` event (set it from another thread, or from a progress callback in a test);
- models are wrapped in comfy's `ModelPatcher` so ComfyUI's memory management can load and evict them
  (`load_models_gpu(..., force_full_load=True)` before each use: our layers are plain `torch.nn`, which ComfyUI
  cannot load partially); outside ComfyUI they sit on the chosen device.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)

CANCEL = threading.Event()  # outside ComfyUI: set it to stop the running sampling node at its next step
DEVICE_CHOICES = ["auto", "cpu"]
DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]


def comfy_module(name: str) -> Any | None:
    """`comfy.<name>` when running inside ComfyUI, else None (never raises)."""
    try:
        return importlib.import_module(f"comfy.{name}")
    except Exception:  # not inside ComfyUI (or a broken install): behave as a plain Python library
        return None


def model_management() -> Any | None:
    return comfy_module("model_management")


# ---- progress and cancel


class Progress:
    """`update(value)` reports `value` of `total`: ComfyUI's progress bar (a cancel point too), else tqdm."""

    def __init__(self, total: int, desc: str = "loopy"):
        utils = comfy_module("utils")
        self.total = int(total)
        self._bar = utils.ProgressBar(self.total) if utils is not None else None
        if self._bar is None:
            from tqdm import tqdm

            self._tqdm = tqdm(total=self.total, desc=desc, unit="step", leave=False)

    def update(self, value: int) -> None:
        if self._bar is not None:
            self._bar.update_absolute(value, self.total)
        else:
            self._tqdm.update(value - self._tqdm.n)

    def close(self) -> None:
        if self._bar is None:
            self._tqdm.close()


def interrupted() -> bool:
    """True when the user asked to stop (ComfyUI's interrupt flag, or `CANCEL` outside ComfyUI)."""
    mm = model_management()
    return bool(mm.processing_interrupted()) if mm is not None else CANCEL.is_set()


@contextlib.contextmanager
def sampling(total: int, desc: str) -> Iterator[tuple[Progress, Callable[[], bool]]]:
    """Progress bar + cancel check for one sampling run. A cancel ends the run with ComfyUI's own interrupt
    exception (so the queue reports "interrupted", not an error) and resets the flag for the next prompt."""
    from loopy_core.pipeline import GenerationCancelled

    bar = Progress(total, desc)
    try:
        yield bar, interrupted
    except GenerationCancelled:
        mm = model_management()
        if mm is not None:
            mm.throw_exception_if_processing_interrupted()  # raises InterruptProcessingException, clears the flag
        CANCEL.clear()
        raise
    finally:
        bar.close()


# ---- devices, dtypes and ModelPatcher


def resolve_device(choice: str):
    """`auto`: ComfyUI's device (honours --cpu etc.), else CUDA when available; `cpu`: the CPU."""
    import torch

    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {choice!r}")
    if choice == "cpu":
        return torch.device("cpu")
    mm = model_management()
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(choice: str, device):
    """`auto`: ComfyUI's choice for the device (honours --fp32-unet etc.), else bf16/fp16 on CUDA, fp32 on CPU."""
    import torch

    from loopy_core.render import DTYPES

    if choice != "auto":
        if choice not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {choice!r}")
        return DTYPES[choice]
    mm = model_management()
    if mm is not None:
        return mm.unet_dtype(device, supported_dtypes=[torch.bfloat16, torch.float16, torch.float32])
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def placement(choice: str) -> tuple[Any, Any]:
    """(load device, device to build the weights on): ComfyUI builds on its offload device and moves on use."""
    device = resolve_device(choice)
    mm = model_management()
    if mm is None or device.type == "cpu":
        return device, device
    return device, mm.unet_offload_device()


def _patcher_root(module):
    """A plain `nn.Module` holding `module`: what `ModelPatcher` wraps. ComfyUI writes its bookkeeping attributes
    (`device`, `model_lowvram`, ...) onto the wrapped module, and transformers models have a read-only `device`;
    on the container they touch nothing of ours, while moving it moves `module` too."""
    import torch

    root = type(type(module).__name__, (torch.nn.Module,), {})()  # ComfyUI logs "Requested to load <name>"
    root.module = module
    return root


@dataclass(eq=False)
class Managed:
    """A torch module, plus the `ModelPatcher` that lets ComfyUI's memory management place it (None outside)."""

    module: Any
    patcher: Any = None

    @classmethod
    def wrap(cls, module, load_device, offload_device) -> Managed:
        mp, mm = comfy_module("model_patcher"), model_management()
        if mp is None or mm is None:
            return cls(module)
        patcher = mp.ModelPatcher(_patcher_root(module), load_device=load_device, offload_device=offload_device,
                                  size=mm.module_size(module))
        return cls(module, patcher)

    def ready(self):
        """The module, loaded on its device (ComfyUI may have evicted it since the last prompt)."""
        if self.patcher is not None:
            model_management().load_models_gpu([self.patcher], force_full_load=True)
        return self.module


def output_device():
    """Where IMAGE/AUDIO outputs live: ComfyUI's intermediate device (the CPU unless --gpu-only)."""
    import torch

    mm = model_management()
    return mm.intermediate_device() if mm is not None else torch.device("cpu")
