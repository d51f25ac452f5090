"""`python -m training.ablation`: rows x seeds trained, exported, scored, tabulated; a rerun resumes."""

from __future__ import annotations

import json

import pytest
import torch

from loopy_core.checkpoint import read_config
from training.ablation import ROWS, main, markdown, summarize


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_world):
    root = tmp_path_factory.mktemp("ablation")
    return root, make_tiny_world(root, videos=2, seconds=1.0, seed=7)


def test_two_rows_two_seeds_then_a_rerun_skips_finished_cells(world, tmp_path, capsys):
    root, init = world
    out = tmp_path / "abl"
    args = ["--data", str(root / "shards"), "--held-out", str(root / "shards"), "--videos", str(root / "videos"),
            "--out", str(out), "--rows", "full,no_tsm", "--seeds", "0,1", "--steps", "2", "--init", str(init),
            "--seconds", "0.6", "--limit", "1", "--probe-clips", "2", "--device", "cpu",
            "train_batch_size=1", "checkpointing_steps=1", "log_every=1", "self_history_prob=0"]
    assert main(args) == 0
    table = json.loads((out / "ablation.json").read_text())["table"]
    assert set(table) == {"full", "no_tsm"}
    for row in table.values():
        assert row["sync@8s"]["n"] == 2 and row["audio_gain"]["n"] == 2
        assert row["sync@8s"]["spread"] >= 0
    for row in ("full", "no_tsm"):
        for seed in (0, 1):
            cell = out / "cells" / row / f"seed{seed}"
            result = json.loads((cell / "result.json").read_text())
            assert result["changes"] == ROWS[row] and result["steps"] == 2
            model_config = read_config(cell / "model.safetensors")  # the row's change is in the exported model
            assert model_config.num_motion_frames == (4 if row == "no_tsm" else 20)
            assert (cell / "run" / "checkpoint-2").is_dir()
    md = (out / "ABLATION.md").read_text()
    assert "| full | 2 |" in md and "| no_tsm | 2 |" in md and "IQA 4.507" in md
    # the seeds were trained apart: the two full cells' weights differ
    from safetensors.torch import load_file

    a = load_file(str(out / "cells" / "full" / "seed0" / "model.safetensors"))
    b = load_file(str(out / "cells" / "full" / "seed1" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("denoiser."))

    # a rerun finds every cell done: nothing is trained again and the same table comes out
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/result.json")}
    capsys.readouterr()
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/result.json")} == stamp
    assert json.loads((out / "ablation.json").read_text())["table"] == table


def test_summary_is_mean_and_half_range():
    table = summarize({"full": {0: {"sync@8s": 0.5, "audio_gain": 0.1}, 1: {"sync@8s": 0.7, "audio_gain": None}}})
    assert table["full"]["sync@8s"] == {"mean": pytest.approx(0.6), "spread": pytest.approx(0.1), "n": 2}
    assert table["full"]["audio_gain"]["n"] == 1
    assert "0.600 ± 0.100" in markdown(table, "setup")


def test_bad_arguments_are_named(world, tmp_path):
    root, init = world
    base = ["--data", str(root / "shards"), "--held-out", str(root / "shards"), "--videos", str(root / "videos"),
            "--out", str(tmp_path / "o")]
    for extra in (["--rows", "full,no_such_row"], ["--steps", "0"], ["--seeds", "a"], ["--init", "missing.st"],
                  ["not_an_override"]):
        with pytest.raises(SystemExit):
            main(base + extra)
    with pytest.raises(ValueError, match="no audio encoder"):  # a fresh tiny init cannot read the shards' audio
        main(base + ["--config", "tiny", "--rows", "full", "--seeds", "0", "--steps", "1"])
