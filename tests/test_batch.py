"""`loopy batch` (loopy_core/batch.py): manifest checks before any model loads, per-row failures in the report,
resuming a killed batch, the same videos as `loopy generate`, and two accelerate processes over gloo."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from loopy_core.batch import REPORT_NAME, ManifestError, read_manifest, read_report
from loopy_core.cli import main
from loopy_core.video import VideoWriter, read_video, save_wav, to_uint8_frames

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 0.25  # one clip of 7 frames at 25 fps
FRAMES = 7


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: fast and free of contention on a shared 2-core machine; the subprocesses below use one too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    assert main(["init", "--config", "tiny", "--out", str(path)]) == 0  # self-contained: embeds its audio encoder
    return path


def make_inputs(folder: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * 16000)) / 16000
    for i in range(n):
        Image.fromarray((rng.random((72, 64, 3)) * 255).astype(np.uint8)).save(folder / f"face{i}.png")
        wave = 0.3 * (1 + np.sin(8 * np.pi * t + i)) * np.sin(2 * np.pi * (150 + 20 * i) * t)
        save_wav(folder / f"voice{i}.wav", wave.astype(np.float32), 16000)


def write_manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def batch_argv(manifest, out, model, *extra) -> list[str]:
    return ["batch", "--manifest", str(manifest), "--out", str(out), "--model", str(model), "--device", "cpu",
            "--quiet", "--crop", "none", "--steps", "1", *extra]


# ---- 1. the manifest is checked before any model loads


@pytest.mark.parametrize(
    "header,rows,message",
    [
        (["image"], [["face0.png"]], "jobs.csv: no 'audio' column (the header row has 'image')"),
        (["image", "audio", "guidence"], [["face0.png", "voice0.wav", "2"]], "unknown column(s) 'guidence'"),
        (["image", "audio"], [["face0.png", "voice0.wav"], ["face1.png", "nope.wav"]],
         "jobs.csv row 3, column 'audio': file 'nope.wav' not found"),
        (["image", "audio"], [["sub", "voice0.wav"]], "jobs.csv row 2, column 'image': 'sub' is a folder"),
        (["image", "audio"], [["", "voice0.wav"]], "row 2, column 'image': empty"),
        (["image", "audio", "audio_cfg"], [["face0.png", "voice0.wav", "-1"]],
         "row 2, column 'audio_cfg': guidance scale '-1' must not be negative"),
        (["image", "audio", "ref_cfg"], [["face0.png", "voice0.wav", "3,-2"]], "column 'ref_cfg'"),
        (["image", "audio", "steps"], [["face0.png", "voice0.wav", "0"]], "column 'steps': 0 is out of range 1..1000"),
        (["image", "audio", "seed"], [["face0.png", "voice0.wav", "1.5"]], "column 'seed': '1.5' is not a whole"),
        (["image", "audio", "scheduler"], [["face0.png", "voice0.wav", "dddim"]], "Unknown scheduler 'dddim'"),
        (["image", "audio", "crop"], [["face0.png", "voice0.wav", "face"]], "column 'crop': 'face' is not 'auto'"),
        (["image", "audio", "output"], [["face0.png", "voice0.wav", "a.mp4"], ["face1.png", "voice1.wav", "A.mp4"]],
         "row 3, column output: 'A.mp4' is also the output of row 2"),
        (["image", "audio"], [["face0.png", "voice0.wav"], ["face0.png", "voice0.wav"]],
         "row 3, column image/audio (the default output name): 'face0_voice0.mp4' is also the output of row 2"),
        (["image", "audio", "output"], [["face0.png", "voice0.wav", "../up.mp4"]], "inside the output folder"),
        (["image", "audio", "output"], [["face0.png", "voice0.wav", "v.avi"]], "'v.avi' must end in .mp4"),
        (["image", "audio"], [["face0.png", "voice0.wav", "extra"]], "row 2: 3 cells but the header has 2"),
        (["image", "audio"], [], "no rows under the header"),
    ],
)
def test_manifest_errors_name_the_row_and_column_before_the_model_loads(tmp_path, header, rows, message, capsys):
    make_inputs(tmp_path, 2)
    (tmp_path / "sub").mkdir()
    manifest = write_manifest(tmp_path / "jobs.csv", header, rows)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert message in str(info.value)
    # through the command: a model that does not exist is never reached, and nothing is written
    out = tmp_path / "out"
    assert main(batch_argv(manifest, out, tmp_path / "no_model.safetensors")) == 2
    err = capsys.readouterr().err
    assert message in err and "no_model" not in err and "Traceback" not in err
    assert not out.exists()


def test_every_bad_cell_is_listed_and_good_rows_parse(tmp_path):
    make_inputs(tmp_path, 2)
    rows = [["face0.png", "missing.wav", "-3", "0"], ["face1.png", "voice1.wav", "", "abc"]]
    with pytest.raises(ManifestError) as info:
        read_manifest(write_manifest(tmp_path / "jobs.csv", ["image", "audio", "audio_cfg", "steps"], rows))
    lines = str(info.value).splitlines()
    assert lines[0] == "4 problem(s) in the manifest, nothing was run:"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "jobs.csv row 2, column 'audio'", "jobs.csv row 2, column 'audio_cfg'", "jobs.csv row 2, column 'steps'",
        "jobs.csv row 3, column 'steps'"]

    rows = [["face0.png", "voice0.wav", "7", "2,1", "4", "euler", "auto", "x/first.mp4", "0,0.5"],
            ["face1.png", "voice1.wav", "", "", "", "", "", "", ""]]
    header = ["image", "audio", "seed", "audio_cfg", "steps", "scheduler", "crop", "output", "guidance_interval"]
    from loopy_core.pipeline import GenerationOptions

    first, second = read_manifest(write_manifest(tmp_path / "ok.csv", header, rows),
                                  GenerationOptions(seed=1, steps=2), crop="none")
    assert (first.row, first.output, first.crop) == (2, "x/first.mp4", "auto")
    assert (first.options.seed, first.options.steps, first.options.scheduler) == (7, 4, "euler")
    assert first.options.audio_guidance_scale == [2.0, 1.0] and first.options.guidance_interval == (0.0, 0.5)
    assert (second.output, second.crop) == ("face1_voice1.mp4", "none")
    assert (second.options.seed, second.options.steps) == (1, 2)
    assert second.image == tmp_path / "face1.png"  # relative to the manifest's folder


# ---- 2. one process: render, fail per row, resume


def test_batch_renders_reports_failures_and_resumes(tmp_path, model, monkeypatch, capsys):
    import loopy_core.render as render

    make_inputs(tmp_path, 3)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt this is not audio")
    save_wav(tmp_path / "silent.wav", np.zeros(4000, np.float32), 16000)
    rows = [["face0.png", "voice0.wav", "", ""], ["face1.png", "broken.wav", "", ""],
            ["face2.png", "voice2.wav", "5", "sub/third.mp4"], ["face0.png", "silent.wav", "", ""]]
    manifest = write_manifest(tmp_path / "jobs.csv", ["image", "audio", "seed", "output"], rows)
    out = tmp_path / "out"
    loads = []
    real_load = render.load_pipeline
    monkeypatch.setattr(render, "load_pipeline", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    # the frames each video was given, before H.264 (whose bits may differ between encodes of the same frames)
    written, real_write = {}, VideoWriter.write
    monkeypatch.setattr(VideoWriter, "write", lambda self, frames: written.setdefault(Path(self.path).name, []).append(
        to_uint8_frames(frames)) or real_write(self, frames))

    def rendered(name):
        return np.concatenate(written[name])

    assert main(batch_argv(manifest, out, model)) == 1  # a row failed: the batch went on, the status says so
    printed = capsys.readouterr().out
    assert "batch: [3/4] row 4 done: sub/third.mp4" in printed
    assert "batch: 4 rows: 2 done, 0 already present, 2 failed" in printed
    report = read_report(out)
    assert [(r["row"], r["status"]) for r in report] == [("2", "done"), ("3", "failed"), ("4", "done"),
                                                         ("5", "failed")]
    assert "not an audio file" in report[1]["error"] and "silent" in report[3]["error"]
    assert report[0]["frames"] == str(FRAMES) and report[0]["output"] == "face0_voice0.mp4"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        REPORT_NAME, "face0_voice0.mp4", "sub", "sub/third.mp4"]  # no output for the failed rows, no temp files
    assert len(loads) == 1

    # the same video as `loopy generate` with the row's seed: one generation path
    single = tmp_path / "single.mp4"
    assert main(["generate", "--image", str(tmp_path / "face2.png"), "--audio", str(tmp_path / "voice2.wav"),
                 "--out", str(single), "--model", str(model), "--device", "cpu", "--quiet", "--crop", "none",
                 "--steps", "1", "--seed", "5"]) == 0
    assert np.array_equal(rendered("single.mp4"), rendered("third.mp4"))

    # a killed batch: one video never finished (its temp file is left), the others are skipped
    first = out / "face0_voice0.mp4"
    frames = rendered(first.name)
    assert read_video(first).frames.shape == frames.shape
    first.unlink()
    written.clear()
    (out / ".tmp-abc123.mp4").write_bytes(b"half a video")
    (tmp_path / "broken.wav").unlink()
    save_wav(tmp_path / "broken.wav", np.sin(np.arange(4000) / 5).astype(np.float32) * 0.3, 16000)  # fixed
    loads.clear()
    capsys.readouterr()
    assert main(batch_argv(manifest, out, model)) == 1
    assert [(r["row"], r["status"]) for r in read_report(out)] == [("2", "done"), ("3", "done"), ("4", "exists"),
                                                                   ("5", "failed")]
    assert np.array_equal(rendered(first.name), frames)  # re-rendered identically
    assert not list(out.glob(".tmp-*")) and not list(out.glob(f".{REPORT_NAME}.part-*"))
    # nothing left to do: no model load at all
    silent = tmp_path / "silent.wav"
    save_wav(silent, np.sin(np.arange(4000) / 7).astype(np.float32) * 0.3, 16000)
    assert main(batch_argv(manifest, out, model)) == 0
    loads.clear()
    assert main(batch_argv(manifest, out, model)) == 0
    assert loads == [] and {r["status"] for r in read_report(out)} == {"exists"}


# ---- 3. two processes with accelerate, on the CPU over gloo


def run_cli(args: list[str], launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(launcher + ["loopy_core.batch", *args[1:]], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_two_accelerate_processes_split_the_rows_and_match_one_process(tmp_path, model):
    make_inputs(tmp_path, 4)
    rows = [[f"face{i}.png", f"voice{i}.wav", str(10 + i)] for i in range(4)]
    manifest = write_manifest(tmp_path / "jobs.csv", ["image", "audio", "seed"], rows)
    one = run_cli(batch_argv(manifest, tmp_path / "one", model), [sys.executable, "-m"])
    assert one.returncode == 0, one.stderr[-3000:]
    # `--multi_gpu` picks accelerate's torchrun launcher; with no GPU each process runs on the CPU over gloo
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    two = run_cli(batch_argv(manifest, tmp_path / "two", model), launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 1/2: 2 of 4 rows" in two.stdout and "process 2/2: 2 of 4 rows" in two.stdout
    report = read_report(tmp_path / "two")
    assert [(r["row"], r["status"], r["process"]) for r in report] == [
        ("2", "done", "0"), ("3", "done", "1"), ("4", "done", "0"), ("5", "done", "1")]  # row k -> process k % 2
    assert not list((tmp_path / "two").glob(f".{REPORT_NAME}.part-*"))
    for i in range(4):
        name = f"face{i}_voice{i}.mp4"
        a, b = read_video(tmp_path / "one" / name), read_video(tmp_path / "two" / name)
        # the same frames from either launch; H.264 may spend its bits a little differently on each encode
        assert a.frames.shape[0] == FRAMES and mean_abs(a.frames, b.frames) < 1.0
        assert np.array_equal(a.audio, b.audio)
    assert mean_abs(a.frames, read_video(tmp_path / "one" / "face0_voice0.mp4").frames) > 5.0  # another row
