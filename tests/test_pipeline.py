"""The generation pipeline and `loopy generate` on a tiny random model (from `loopy init --config tiny`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from loopy_core.audio import tiny_wav2vec2
from loopy_core.checkpoint import load_checkpoint, load_embedded_audio_encoder, save_checkpoint
from loopy_core.cli import main
from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from loopy_core.pipeline import GenerationCancelled, GenerationOptions, LoopyPipeline
from loopy_core.video import read_video, save_wav

FPS = 25
STEPS = 3


def speech(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a 150 Hz buzz under a 4 Hz syllable envelope, plus a little noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    return (0.3 * env * np.sin(2 * np.pi * 150 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    model = LoopyModel(cfg)
    for name, p in model.named_parameters():  # give the zero-initialised temporal outputs "trained" values
        if "proj_out" in name:
            p.data.normal_(0, 0.05)
    ckpt = save_checkpoint(model, root / "tiny.safetensors", audio_encoder=tiny_wav2vec2(cfg.audio))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 70, 3)) * 255).astype(np.uint8)).save(root / "face.png")
    save_wav(root / "speech.wav", speech(1.3), 16000)
    return root, ckpt


@pytest.fixture(scope="module")
def pipe(files):
    _, ckpt = files
    return LoopyPipeline(load_checkpoint(ckpt), load_embedded_audio_encoder(ckpt))


def image():
    return np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "seconds,frames", [(0.2, 5), (12 / FPS, 12), (24 / FPS, 24), (25 / FPS, 25)]
)  # shorter than a clip, exactly 1 and 2 clips, 2 clips + 1 frame
def test_frame_count_follows_audio_length(pipe, seconds, frames):
    audio = pipe.encode_audio(speech(seconds), 16000)
    assert audio.num_frames == frames == math.ceil(seconds * FPS - 1e-9)
    out = pipe(image(), audio, GenerationOptions(steps=1))
    assert out.shape == (frames, 64, 64, 3) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_same_seed_same_frames_other_seed_other_frames(pipe):
    audio = pipe.encode_audio(speech(0.6), 16000)
    a = pipe(image(), audio, GenerationOptions(steps=STEPS, seed=5))
    b = pipe(image(), audio, GenerationOptions(steps=STEPS, seed=5))
    c = pipe(image(), audio, GenerationOptions(steps=STEPS, seed=6))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_sequential_guidance_equals_batched(pipe):
    audio = pipe.encode_audio(speech(0.5), 16000)
    batched = pipe(image(), audio, GenerationOptions(steps=STEPS, audio_guidance_scale=2.0, ref_guidance_scale=1.5))
    sequential = pipe(
        image(), audio,
        GenerationOptions(steps=STEPS, audio_guidance_scale=2.0, ref_guidance_scale=1.5, sequential_guidance=True),
    )
    torch.testing.assert_close(batched, sequential, atol=1e-4, rtol=0)


def test_unit_scales_give_the_fully_conditioned_prediction(pipe):
    """With ref = audio = 1 only the full branch runs; it equals the three-branch combination at nearby scales."""
    audio = pipe.encode_audio(speech(0.5), 16000)
    shortcut = pipe(image(), audio, GenerationOptions(steps=STEPS, audio_guidance_scale=1.0, ref_guidance_scale=1.0))
    all_three = GenerationOptions(steps=STEPS, audio_guidance_scale=1.0 + 2e-9, ref_guidance_scale=1.0 + 1e-9)
    torch.testing.assert_close(shortcut, pipe(image(), audio, all_three), atol=1e-4, rtol=0)


def test_ref_scale_one_skips_the_unconditional_branch(pipe, monkeypatch):
    audio = pipe.encode_audio(speech(0.3), 16000)
    batches = []
    forward = pipe.model.denoiser.forward
    monkeypatch.setattr(pipe.model.denoiser, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k))
    pipe(image(), audio, GenerationOptions(steps=2, audio_guidance_scale=2.0, ref_guidance_scale=1.0))
    assert batches == [2, 2]
    batches.clear()
    pipe(image(), audio, GenerationOptions(steps=2, audio_guidance_scale=2.0, ref_guidance_scale=3.0))
    assert batches == [3, 3]


def test_guidance_interval_runs_one_branch_outside_it(pipe, monkeypatch):
    """Guidance on the first half of 4 steps: 3 branches on steps 1-2, the full branch alone on 3-4, and those
    last steps equal a run with unit scales from step 3 on (same noise, same first steps)."""
    audio = pipe.encode_audio(speech(0.3), 16000)
    batches = []
    forward = pipe.model.denoiser.forward
    monkeypatch.setattr(pipe.model.denoiser, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k))
    half = pipe(image(), audio, GenerationOptions(steps=4, audio_guidance_scale=2.0, ref_guidance_scale=3.0,
                                                  guidance_interval=(0.0, 0.5)))
    assert batches == [3, 3, 1, 1]
    batches.clear()
    schedule = GenerationOptions(steps=4, audio_guidance_scale=[2.0, 2.0, 1.0, 1.0], ref_guidance_scale=[3.0, 3.0, 1.0, 1.0])
    torch.testing.assert_close(half, pipe(image(), audio, schedule), atol=1e-5, rtol=0)
    assert batches == [3, 3, 1, 1]
    batches.clear()
    late = pipe(image(), audio, GenerationOptions(steps=4, audio_guidance_scale=2.0, ref_guidance_scale=3.0,
                                                  guidance_interval="0.5,1"))
    assert batches == [1, 1, 3, 3] and not torch.allclose(late, half)


@pytest.mark.parametrize("interval", ["0.5", "0.6,0.2", "0,1.5", "a,b", (0.0, 0.5, 1.0)])
def test_bad_guidance_interval_is_named(pipe, interval):
    with pytest.raises(ValueError, match="guidance interval"):
        GenerationOptions(guidance_interval=interval).check()


def test_history_never_exceeds_the_tsm_span(pipe):
    audio = pipe.encode_audio(speech(6.0), 16000)  # 150 frames > 124-frame span
    state = pipe.start_video(image(), seed=0)
    sizes = []
    for k in range(math.ceil(audio.num_frames / 12)):
        pipe.run_clip(state, audio, k, GenerationOptions(steps=1))
        sizes.append(state.history.shape[2])
    assert max(sizes) == pipe.model.tsm.span == 124
    assert sizes[:3] == [12, 24, 36] and sizes[-1] == 124


def test_callback_reports_every_step_and_cancel_stops(pipe):
    audio = pipe.encode_audio(speech(1.0), 16000)  # 25 frames = 3 clips
    seen = []
    pipe(image(), audio, GenerationOptions(steps=2), callback=seen.append)
    assert [(i["clip"], i["step"]) for i in seen] == [(c, s) for c in range(3) for s in (1, 2)]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3  # after 3 steps

    with pytest.raises(GenerationCancelled):
        pipe(image(), audio, GenerationOptions(steps=2), cancel=cancel)
    assert len(calls) == 4


def test_continuing_from_frames_changes_the_motion_frames(pipe):
    audio = pipe.encode_audio(speech(0.5), 16000)
    first = pipe(image(), audio, GenerationOptions(steps=2))
    state = pipe.start_video(image(), seed=0, frames=first)
    assert state.history.shape[2] == first.shape[0]
    cont = pipe.run_clip(state, audio, 0, GenerationOptions(steps=2))
    fresh = pipe.run_clip(pipe.start_video(image(), seed=0), audio, 0, GenerationOptions(steps=2))
    assert (cont - fresh).abs().max() > 1e-4


def test_anchor_history_moves_only_the_coarse_appearance_to_the_reference():
    """`anchor_history` takes a colour drift of the motion frames (a per-channel offset, different per frame) back to
    the reference (all of it at 1, half at 0.5) and keeps fine detail (a pixel checkerboard: no coarse content);
    at 0 it returns them as they were."""
    from loopy_core.pipeline import anchor_history

    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 4, 8, 8, generator=gen)
    drift = torch.randn(1, 4, 5, 1, 1, generator=gen)  # [B, C, M, 1, 1]
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1.0  # zero mean in every 2x2 cell
    motion = ref[:, :, None] + drift
    assert anchor_history(motion, ref, 0.0) is motion
    assert torch.allclose(anchor_history(motion, ref, 1.0), ref[:, :, None].expand_as(motion), atol=1e-5)
    assert torch.allclose(anchor_history(motion, ref, 0.5), ref[:, :, None] + 0.5 * drift, atol=1e-5)
    detailed = ref[:, :, None] + 0.3 * checker
    assert torch.allclose(anchor_history(detailed, ref, 1.0), detailed, atol=1e-5)


def test_history_anchor_acts_from_the_second_clip(pipe, monkeypatch):
    """The first clip's motion frames are the reference's padding (nothing to anchor); later clips' motion frames,
    as the ReferenceNet sees them, are anchored; the option is checked."""
    audio = pipe.encode_audio(speech(1.0), 16000)  # 3 clips
    seen = []
    forward = pipe.model.reference_net.forward
    monkeypatch.setattr(pipe.model.reference_net, "forward",
                        lambda ref, mf: (ref is None and seen.append(mf)) or forward(ref, mf))
    plain = pipe(image(), audio, GenerationOptions(steps=2))
    plain_motion, seen[:] = list(seen), []
    anchored = pipe(image(), audio, GenerationOptions(steps=2, history_anchor=1.0))
    assert len(seen) == len(plain_motion) == 3
    assert torch.equal(seen[0], plain_motion[0]) and torch.allclose(anchored[:12], plain[:12])
    assert (seen[1] - plain_motion[1]).abs().max() > 1e-4 and (anchored[12:] - plain[12:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="history_anchor"):
        pipe(image(), audio, GenerationOptions(steps=2, history_anchor=1.5))


def test_generate_cli_writes_mp4_with_audio(files, capsys):
    root, ckpt = files
    out = root / "out.mp4"
    argv = ["generate", "--image", str(root / "face.png"), "--audio", str(root / "speech.wav"), "--out", str(out),
            "--model", str(ckpt), "--steps", "2", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    assert "33 frames" in capsys.readouterr().out  # ceil(1.3 s * 25)
    video = read_video(out)
    assert video.frames.shape == (33, 90, 70, 3) and video.fps == pytest.approx(25)  # --crop auto: the photo's size
    assert video.audio is not None
    assert abs(video.audio.shape[1] / video.sample_rate - 33 / 25) <= 1 / 25 + 0.03  # AAC priming


def test_generate_speed_flags_reach_the_pipeline(files, monkeypatch):
    root, ckpt = files
    seen = []
    real = LoopyPipeline.optimize

    def spy(self, **kwargs):
        seen.append(kwargs)
        return real(self, **{**kwargs, "compile": False})  # compiling is tested in test_performance.py

    monkeypatch.setattr(LoopyPipeline, "optimize", spy)
    argv = ["generate", "--image", str(root / "face.png"), "--audio", str(root / "speech.wav"), "--out",
            str(root / "fast.mp4"), "--model", str(ckpt), "--steps", "1", "--device", "cpu", "--quiet",
            "--channels-last", "--compile", "--guidance-interval", "0,0.5", "--history-anchor", "0.25"]
    options = []
    real_clips = LoopyPipeline.clips
    monkeypatch.setattr(LoopyPipeline, "clips", lambda self, image, audio, opts, **k: options.append(opts) or
                        real_clips(self, image, audio, opts, **k))
    assert main(argv) == 0
    assert seen == [{"channels_last": True, "compile": True}]
    assert options[0].guidance_interval == (0.0, 0.5) and options[0].history_anchor == 0.25
    assert read_video(root / "fast.mp4").frames.shape[0] == 33


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--image": "missing.png"}, "missing.png"),
        ({"--audio": "missing.wav"}, "missing.wav"),
        ({"--scheduler": "warp"}, "Unknown scheduler 'warp'"),
        ({"--out": "video.avi"}, "must be an .mp4"),
        ({"--audio": "silence.wav"}, "silent"),
        ({"--audio": "empty.wav"}, "no samples"),
        ({"--audio": "long.wav", "--max-seconds": "2"}, "--max-seconds"),
        ({"--image": "notes.png"}, "not a readable image"),
        ({"--steps": "0"}, "steps must be"),
        ({"--audio-cfg": "loud"}, "not a number"),
        ({"--guidance-interval": "0.5"}, "guidance interval"),
    ],
)
def test_generate_bad_inputs(files, change, message, capsys, tmp_path, monkeypatch):
    root, ckpt = files
    monkeypatch.chdir(tmp_path)
    save_wav(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    import soundfile

    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    save_wav(tmp_path / "long.wav", speech(3.0), 16000)
    (tmp_path / "notes.png").write_text("not an image")
    args = {"--image": str(root / "face.png"), "--audio": str(root / "speech.wav"), "--out": "out.mp4",
            "--model": str(ckpt), "--steps": "1", "--device": "cpu"}
    args.update(change)
    argv = ["generate", "--quiet"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".tmp-*"))


def test_interrupted_generate_leaves_no_file(files, pipe, tmp_path):
    from loopy_core.render import render_video

    root, _ = files
    out = tmp_path / "x.mp4"
    with pytest.raises(GenerationCancelled):
        render_video(pipe, image(), speech(1.0)[None], 16000, out, GenerationOptions(steps=2), progress=False,
                     cancel=lambda: True)
    assert list(tmp_path.iterdir()) == []


def test_memory_does_not_grow_with_video_length(files, tmp_path):
    """Peak resident memory of a 40 s video streamed to mp4 equals that of a 2 s one (each in a fresh process)."""
    import json
    import subprocess
    import sys

    root, ckpt = files
    script = (
        "import json, resource, sys\n"
        "from loopy_core.cli import main\n"
        "assert main(sys.argv[1:]) == 0\n"
        "print(json.dumps({'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    peaks = {}
    for seconds in (2.0, 40.0):
        wav = tmp_path / f"{seconds}.wav"
        save_wav(wav, speech(seconds), 16000)
        argv = ["generate", "--image", str(root / "face.png"), "--audio", str(wav), "--out",
                str(tmp_path / f"{seconds}.mp4"), "--model", str(ckpt), "--steps", "1", "--device", "cpu", "--quiet"]
        out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[seconds] = json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"]
    assert read_video(tmp_path / "40.0.mp4").frames.shape[0] == 1000
    assert peaks[40.0] <= peaks[2.0] * 1.05 + 8, peaks


def test_out_of_memory_is_reported_with_the_options_that_lower_it(pipe, monkeypatch):
    from loopy_core.pipeline import LoopyOutOfMemory

    audio = pipe.encode_audio(speech(0.3), 16000)

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipe.model.denoiser, "forward", boom)
    with pytest.raises(LoopyOutOfMemory, match="clip 0.*--low-memory.*decode_slice_size.*--dtype fp16"):
        pipe(image(), audio, GenerationOptions(steps=1))
