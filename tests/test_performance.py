"""Speed-up options (`LoopyPipeline.optimize`) keep the output; `loopy bench` saves each part as it finishes."""

from __future__ import annotations

import json

import pytest
import torch

from loopy_core.bench import build_pipeline, random_audio, reference_image
from loopy_core.cli import main
from loopy_core.config import LoopyConfig
from loopy_core.pipeline import GenerationOptions


def _video(pipe, config):
    audio = random_audio(config, config.frames_per_clip + 3)
    return pipe(reference_image(config), audio, GenerationOptions(steps=2, seed=3))


def is_compiled(module: torch.nn.Module) -> bool:
    return module._compiled_call_impl is not None  # set by `nn.Module.compile`, None on every module until then


def test_channels_last_and_compile_match_eager(monkeypatch):
    config = LoopyConfig.preset("tiny")
    eager = _video(build_pipeline(config, "cpu", torch.float32), config)
    fast = build_pipeline(config, "cpu", torch.float32).optimize(channels_last=True)
    conv = fast.model.denoiser.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(_video(fast, config), eager, atol=1e-4, rtol=0)
    # the graph capture is what can break; aot_eager checks it without a C++ toolchain's minutes of compiling
    from torch._dynamo.utils import counters

    from loopy_core.pipeline import REPEATED_BLOCKS

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)  # dynamo's default, restored after the test
    for scope in ("blocks", "denoiser"):
        torch._dynamo.reset()
        counters.clear()
        compiled = build_pipeline(config, "cpu", torch.float32).optimize(
            compile=True, compile_scope=scope, compile_backend="aot_eager")
        denoiser = compiled.model.denoiser
        blocks = [m for m in denoiser.modules() if isinstance(m, REPEATED_BLOCKS)]
        assert is_compiled(denoiser) == (scope == "denoiser")
        assert blocks and all(is_compiled(m) == (scope == "blocks") for m in blocks)
        assert not is_compiled(compiled.model.reference_net)
        if scope == "blocks":  # sd15 has more block shapes than dynamo's default 8 graphs per function
            assert torch._dynamo.config.recompile_limit >= 64
        torch.testing.assert_close(_video(compiled, config), eager, atol=1e-4, rtol=0)
        if scope == "denoiser":  # every step of every clip reuses one graph: nothing in forward changes between them
            assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    with pytest.raises(ValueError, match="compile_scope must be one of"):
        build_pipeline(config, "cpu", torch.float32).optimize(compile=True, compile_scope="everything")


def test_bench_writes_each_part_and_reports_optimizations(tmp_path, capsys, monkeypatch):
    import loopy_core.bench as bench

    out = tmp_path / "bench.json"
    seen = []
    real = bench.bench_tsm

    def tsm_after_saving(*args, **kwargs):
        seen.append(json.loads(out.read_text()))  # saved before this part started
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_tsm", tsm_after_saving)
    args = ["bench", "--config", "tiny", "--steps", "1", "--device", "cpu", "--only", "clip,tsm,channels_last",
            "--json", str(out)]
    assert main(args) == 0
    assert set(seen[0]) >= {"clip"} and "tsm" not in seen[0]
    results = json.loads(out.read_text())
    cl = results["channels_last"]
    assert cl["seconds_per_clip"] > 0 and abs(cl["speedup"] - cl["eager_s"] / cl["seconds_per_clip"]) < 1e-9
    assert cl["eager_s"] == results["clip"]["seconds_per_clip"]
    assert "channels-last: eager / optimized" in capsys.readouterr().out


def test_bench_compile_parts_ask_for_their_scope(capsys, monkeypatch):
    import loopy_core.bench as bench

    asked = []

    def fake_optimized(config, device, dtype, steps, eager_s, **optimize):
        asked.append(optimize)
        return {"seconds_per_clip": eager_s / 2, "first_clip_s": 9.0, "eager_s": eager_s, "speedup": 2.0}

    monkeypatch.setattr(bench, "bench_optimized", fake_optimized)
    assert main(["bench", "--config", "tiny", "--steps", "1", "--device", "cpu",
                 "--only", "clip,compile,compile_denoiser,compile_cudagraphs"]) == 0
    assert asked == [{"compile": True}, {"compile": True, "compile_scope": "denoiser"},
                     {"compile": True, "compile_scope": "denoiser", "compile_mode": "reduce-overhead"}]
    out = capsys.readouterr().out
    assert "compile: eager / optimized" in out and "compile-denoiser: eager / optimized" in out
    assert "compile-cudagraphs: eager / optimized" in out


def test_bench_times_diffusers_animatediff_pipeline_end_to_end(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--config", "tiny", "--steps", "2", "--device", "cpu", "--only", "clip,animatediff",
            "--json", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())
    a = results["animatediff"]
    assert a["seconds_per_clip"] > 0 and a["branches"] == 2
    assert a["ours_clip_s"] == results["clip"]["seconds_per_clip"]  # beside our clip of the same run
    assert a["ours_over_animatediff"] == a["ours_clip_s"] / a["seconds_per_clip"]
    assert "ours (3 branches) / AnimateDiffPipeline" in capsys.readouterr().out
    # a model without SD's VAE (the demo's pixel codec) has no AnimateDiff counterpart: the part is left out
    assert main(["bench", "--config", "demo", "--steps", "1", "--device", "cpu", "--only", "animatediff",
                 "--json", str(out)]) == 0
    assert "animatediff" not in json.loads(out.read_text())


def test_bench_sampling_settings_run_the_intended_denoiser_work(tmp_path, capsys, monkeypatch):
    """Each `SAMPLING` setting runs the branch evaluations it says (per timed clip), and the table shows them."""
    import loopy_core.bench as bench

    config = LoopyConfig.preset("tiny")
    pipe = build_pipeline(config, "cpu", torch.float32)
    counts = []
    forward = pipe.model.denoiser.forward
    monkeypatch.setattr(pipe.model.denoiser, "forward", lambda x, *a, **k: counts.append(x.shape[0]) or forward(x, *a, **k))
    work = {}
    for name, setting in bench.SAMPLING.items():
        counts.clear()
        row = bench.bench_sampling(pipe, {name: setting}, repeats=1)[name]
        work[name] = sum(counts) / 2  # warm-up + one timed clip
        assert row["seconds_per_clip"] > 0 and row["steps"] == setting["steps"]
    assert list(work.values()) == [75, 50, 10 * 3 + 15, 36, 6 * 3 + 6, 4 * 3 + 6]


def test_bench_profile_lists_the_heaviest_operators(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["bench", "--config", "tiny", "--device", "cpu", "--only", "profile", "--json", str(out)]) == 0
    prof = json.loads(out.read_text())["profile"]
    ops = prof["ops"]
    assert prof["time"] == "cpu" and 5 <= len(ops) <= 15 and prof["total_ms"] > 0
    assert [r["ms"] for r in ops] == sorted((r["ms"] for r in ops), reverse=True)
    assert 0 < sum(r["share"] for r in ops) <= 1.0 + 1e-9
    assert any("conv" in r["op"] or "addmm" in r["op"] or "mm" in r["op"] for r in ops)
    assert "op: " in capsys.readouterr().out
