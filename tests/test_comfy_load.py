"""The repo root loads the way ComfyUI loads a custom node: by file path, under a folder name with a hyphen."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loads_by_file_path_without_shadowing_comfy_nodes(tmp_path):
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    (custom / "comfyui-loopy").symlink_to(ROOT, target_is_directory=True)
    # A fake ComfyUI: its own top-level `nodes` module is imported first, as in ComfyUI's main.py.
    (tmp_path / "nodes.py").write_text("COMFY_BUILTIN = True\n")
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, os
        sys.path.insert(0, {str(tmp_path)!r})
        import nodes
        path = os.path.join({str(custom)!r}, "comfyui-loopy", "__init__.py")
        spec = importlib.util.spec_from_file_location("comfyui-loopy", path,
            submodule_search_locations=[os.path.dirname(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["comfyui-loopy"] = module
        spec.loader.exec_module(module)
        assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
        assert isinstance(module.NODE_DISPLAY_NAME_MAPPINGS, dict)
        assert len(module.NODE_CLASS_MAPPINGS) == 8 and all(k.startswith("Loopy") for k in module.NODE_CLASS_MAPPINGS)
        assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(module.NODE_CLASS_MAPPINGS)
        assert sys.modules["nodes"].COMFY_BUILTIN, "ComfyUI's nodes module was shadowed"
        heavy = [m for m in ("diffusers", "transformers") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout  # nothing heavy at import time


def test_only_loopy_core_is_packaged():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["loopy_core", "loopy_core.*"]' in text
    assert importlib.util.find_spec("loopy_core") is not None
