"""`loopy eval-suite` (loopy_core/eval/suite.py and its networks): tiny random networks of the real architectures,
saved to safetensors in tmp folders, on synthetic talking-face videos written here. The numbers these networks give
mean nothing about quality; the tests check the protocol: identical sets give FID = FVD = E-FID = 0 and equal sync
scores, the offset search finds a constructed shift, weights are found where the README says, errors name what is
missing. Every test sees an empty Hugging Face cache, no $LOOPY_EVAL_WEIGHTS and no ComfyUI (`isolated_search`), so
files on this machine do not change what the tests find."""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from loopy_core.eval import suite
from loopy_core.eval import weights as eval_weights
from loopy_core.eval.face3d import COEFFICIENTS, Face3DRecon
from loopy_core.eval.fvd import I3D, frechet_distance
from loopy_core.eval.inception import InceptionV3Features
from loopy_core.eval.syncnet import SyncNet, mfcc, sync_curve, sync_scores
from loopy_core.eval.weights import convert_to_safetensors, read_state_dict

SECONDS = 1.28  # 32 frames: 26 SyncNet windows, 2 FVD clips a video
NAMES = ("alice", "bob")
TINY = {"sync": (SyncNet, 1 / 32), "fid": (InceptionV3Features, 1 / 16), "fvd": (I3D, 1 / 32),
        "e_fid": (Face3DRecon, 1 / 8)}


CALIBRATION = {  # one batch of random inputs per network, to set its BatchNorm statistics
    SyncNet: lambda net: (net.forward_audio(50 * torch.randn(4, 1, 13, 20)),
                          net.forward_video(255 * torch.rand(4, 3, 5, 224, 224))),
    InceptionV3Features: lambda net: net(torch.rand(4, 3, 64, 64)),
    I3D: lambda net: net(2 * torch.rand(2, 3, 16, 112, 112) - 1),
    Face3DRecon: lambda net: net(torch.rand(4, 3, 224, 224)),
}


@pytest.fixture(scope="module", autouse=True)
def isolated_search(tmp_path_factory):
    """No weights from this machine: an empty hub cache, no $LOOPY_EVAL_WEIGHTS, no ComfyUI around the checkout."""
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("search")
    (root / "hub").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(eval_weights.ENV_WEIGHTS, raising=False)
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
        mp.setattr(eval_weights, "PACKAGE_DIR", root / "checkout" / "comfyui-loopy")
        mp.setitem(sys.modules, "folder_paths", None)  # `import folder_paths` raises ImportError
        yield root


def _calibrated(net: torch.nn.Module) -> torch.nn.Module:
    """A random network whose BatchNorm statistics are those of random inputs: without them the activations of a
    deep random net die out layer by layer and every video gets the same (zero) features."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        CALIBRATION[type(net)](net.train())
    return net.eval()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    for i, (key, (cls, width)) in enumerate(TINY.items()):
        torch.manual_seed(i)
        net = _calibrated(cls(width=width))
        name = suite.NETWORKS[key].filenames[0]
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / name))
    return folder


def _write(path, frames, audio, sample_rate):
    from loopy_core.video import VideoWriter

    with VideoWriter(path, 25, audio, sample_rate) as writer:
        writer.write(frames)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """truth/ with three synthetic videos, pred/ an exact copy, other/ the same names with other faces."""
    from loopy_core.synthetic import make_sample

    root = tmp_path_factory.mktemp("videos")
    for sub in ("truth", "pred", "other"):
        (root / sub).mkdir()
    for i, name in enumerate(NAMES):
        sample = make_sample(10 + i, SECONDS, size=64)
        _write(root / "truth" / f"{name}.mp4", sample.frames, sample.audio, sample.sample_rate)
        shutil.copy(root / "truth" / f"{name}.mp4", root / "pred" / f"{name}.mp4")
        other = make_sample(50 + i, SECONDS, size=64)
        _write(root / "other" / f"{name}.mp4", other.frames, sample.audio, sample.sample_rate)
    return root


@pytest.fixture(scope="module")
def nets(weights_dir):
    return suite.load_networks(suite.resolve_weights(weights_dir), "cpu")


@pytest.fixture(scope="module")
def identical(folders, nets):
    return suite.run_suite(suite.match_videos(folders / "pred", folders / "truth"), nets)


def test_identical_sets_give_zero_fid_and_fvd_and_equal_sync(identical):
    s = identical["summary"]
    assert s["fid"]["available"] and s["fid"]["backend"] == "torchmetrics"
    assert s["fid"]["samples"] == [2 * 32, 2 * 32]
    assert abs(s["fid"]["value"]) < 1e-6
    assert s["fvd"]["available"] and s["fvd"]["samples"] == [4, 4]
    assert abs(s["fvd"]["value"]) < 1e-6
    for video in identical["videos"]:
        pred, truth = video["pred"]["sync"], video["truth"]["sync"]
        assert pred["available"] and pred["windows"] == 26
        assert pred["sync_d"] == truth["sync_d"] and pred["sync_c"] == truth["sync_c"]
        assert pred["sync_d"] > 0 and pred["sync_c"] >= 0
        assert video["pred"]["frames"] == 32 and video["audio_from"] == "pred"
    assert s["sync_d"]["pred"] == s["sync_d"]["truth"]
    assert s["smoothness"]["pred"] == s["smoothness"]["truth"] and 0.9 < s["smoothness"]["pred"] <= 1.0
    assert s["seam_jitter"]["available"] and s["drift"]["pred"] == s["drift"]["truth"]
    assert s["e_fid"]["available"] and s["e_fid"]["samples"] == [2 * 32, 2 * 32]
    assert abs(s["e_fid"]["value"]) < 1e-6
    assert not s["iqa"]["available"] and "Q-Align" in s["iqa"]["reason"]


def test_offset_search_recovers_a_constructed_shift():
    g = torch.Generator().manual_seed(0)
    n, d, shift = 80, 32, 4
    signal = torch.randn(n + 2 * shift, d, generator=g)
    video = signal[shift : shift + n]
    audio = signal[:n]  # audio window i + shift holds what video window i shows: the sound comes `shift` later
    audio_late = signal[2 * shift : 2 * shift + n]  # and the other way round
    scores = sync_scores(video, audio)
    assert scores["offset_frames"] == -shift  # syncnet_python's sign
    assert sync_scores(video, audio_late)["offset_frames"] == shift
    aligned = sync_scores(video, video)
    assert aligned["offset_frames"] == 0 and aligned["sync_d"] < 1e-9
    # a swapped (unrelated) audio track scores worse on both measures than the matching one
    swapped = sync_scores(video, torch.randn(n, d, generator=g))
    assert swapped["sync_d"] > scores["sync_d"] + 1.0
    assert swapped["sync_c"] < 0.5 * scores["sync_c"]
    # the curve's columns pair video window i with audio window i + j - 15, zeros past the ends
    curve = sync_curve(video, audio)
    assert curve.shape == (n, 31)
    assert torch.allclose(curve[10, 15 + shift], torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(curve[0, 0], video[0].norm())


def test_mfcc_rate_and_energy():
    t = np.arange(16000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    coeffs = mfcc(wave, 16000)
    assert coeffs.shape == (13, 98)  # 25 ms frames every 10 ms over 1 s, no end padding
    assert mfcc(np.repeat(wave, 3), 48000).shape == (13, 98)  # resampled to 16 kHz first
    louder = mfcc(2 * wave, 16000)
    assert torch.allclose(louder[0] - coeffs[0], torch.full((98,), 2 * np.log(2.0)), atol=1e-3)  # c0 = log energy
    assert torch.allclose(louder[1:], coeffs[1:], atol=1e-3)  # the other coefficients do not see a gain


def test_frechet_distance_agrees_with_torchmetrics_and_the_closed_form():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g, dtype=torch.float64)
    y = 0.5 * torch.randn(300, 8, generator=g, dtype=torch.float64) + 1.0
    ours = frechet_distance(x, y)
    assert ours == pytest.approx(suite.torchmetrics_fid(x, y), rel=1e-6)
    # two Gaussians with covariances I and I/4 and means 0 and 1: 8 + 8 (1 + 1/4 - 2/2) = 10, up to sampling
    assert ours == pytest.approx(8 * 1.0 + 8 * (1 + 0.25 - 1.0), rel=0.15)
    assert abs(frechet_distance(x, x)) < 1e-9


def test_missing_weights_name_the_metric_the_file_and_every_place_searched(tmp_path, weights_dir, isolated_search,
                                                                           monkeypatch):
    monkeypatch.setenv(eval_weights.ENV_WEIGHTS, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as e:
        suite.resolve_weights(tmp_path)
    message = str(e.value)
    for text in ("Sync-C / Sync-D needs SyncNet weights syncnet_v2.safetensors or syncnet_v2.model (or pass --syncnet",
                 "FID needs Inception-v3 (FID) weights pt_inception-2015-12-05.safetensors", "--inception", "FVD",
                 "i3d_kinetics400.safetensors", "--i3d", f"--weights {tmp_path}",
                 f"$LOOPY_EVAL_WEIGHTS {tmp_path / 'nowhere'} (no such folder)",
                 "ComfyUI models/loopy_eval (none: ComfyUI's folder_paths",
                 f"Hugging Face hub cache {isolated_search / 'hub' / 'models--*' / 'snapshots' / '*'}",
                 "Put each file", "models/loopy_eval (README", "--skip-missing"):
        assert text in message, text
    assert "E-FID" not in message  # optional: not computed without its file, not an error
    assert suite.resolve_weights(tmp_path, skip_missing=True) == {"sync": None, "fid": None, "fvd": None,
                                                                 "e_fid": None}
    monkeypatch.delenv(eval_weights.ENV_WEIGHTS)
    with pytest.raises(FileNotFoundError, match=r"--weights \(not given\); \$LOOPY_EVAL_WEIGHTS \(not set\)"):
        suite.resolve_weights(None)
    with pytest.raises(FileNotFoundError, match="FVD: I3D"):
        suite.resolve_weights(weights_dir, {"fvd": str(tmp_path / "nope.safetensors")})
    # one given path, the rest from the folder
    (tmp_path / "i3d.safetensors").write_bytes((weights_dir / "i3d_kinetics400.safetensors").read_bytes())
    found = suite.resolve_weights(weights_dir, {"fvd": str(tmp_path / "i3d.safetensors")})
    assert found["fvd"] == str(tmp_path / "i3d.safetensors") and found["sync"].endswith("syncnet_v2.safetensors")


def test_unmatched_names_are_listed(tmp_path, folders):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for name in ("a", "b"):
        shutil.copy(folders / "truth" / "alice.mp4", pred / f"{name}.mp4")
    for name in ("a", "c"):
        shutil.copy(folders / "truth" / "alice.mp4", truth / f"{name}.mp4")
    (truth / "a.json").write_text("{}")  # not a video: ignored
    with pytest.raises(ValueError, match=r"only in --pred: b; only in --truth: c"):
        suite.match_videos(pred, truth)
    assert [e.name for e, _, _ in suite.match_videos(pred, truth, [suite.SplitEntry("a")])] == ["a"]
    with pytest.raises(ValueError, match=r"missing from the folders: b \(--truth\), z \(--pred, --truth\)"):
        suite.match_videos(pred, truth, [suite.SplitEntry("b"), suite.SplitEntry("z")])


def test_split_list_format(tmp_path):
    path = tmp_path / "hdtf.txt"
    path.write_text("# HDTF test videos\nalice 0 25\nbob,5,30  # a comment\n\ncarol\n")
    assert suite.read_split_list(path) == [suite.SplitEntry("alice", 0, 25), suite.SplitEntry("bob", 5, 30),
                                           suite.SplitEntry("carol")]
    for bad, match in (("alice 5\n", "NAME START END"), ("alice 9 3\n", "START < END"), ("a x 3\n", "frame numbers"),
                       ("a\na\n", "twice"), ("# nothing\n", "names no video")):
        path.write_text(bad)
        with pytest.raises(ValueError, match=match):
            suite.read_split_list(path)


def test_weights_files_load_without_unpickling_code(tmp_path):
    torch.manual_seed(0)
    net = SyncNet(width=1 / 32)
    legacy = tmp_path / "syncnet_v2.model"
    torch.save({f"__S__.{k}": v for k, v in net.state_dict().items()}, legacy)  # the community file's wrapper prefix
    state = read_state_dict(legacy)
    assert set(state) == set(net.state_dict())
    assert SyncNet.from_state_dict(state).width == pytest.approx(1 / 32)
    assert convert_to_safetensors(legacy, tmp_path / "s.safetensors") == len(state)
    assert torch.equal(read_state_dict(tmp_path / "s.safetensors")["netfcaud.3.weight"], net.netfcaud[3].weight)
    # a pickled object other than tensors is refused, not run
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "object.pth")
    with pytest.raises(ValueError, match="holds more than tensors"):
        read_state_dict(tmp_path / "object.pth")
    # a file of another network names the keys that do not fit
    from loopy_core.eval.weights import load_weights

    with pytest.raises(ValueError, match=r"missing keys: .*netcnnlip"):
        load_weights(SyncNet(width=1 / 32), {k: v for k, v in state.items() if "lip" not in k}, "test file")


def test_full_size_architectures_match_the_released_layouts():
    with torch.device("meta"):
        sync, inception, i3d = SyncNet(), InceptionV3Features(), I3D()
    shapes = {k: tuple(v.shape) for k, v in sync.state_dict().items()}
    assert shapes["netcnnaud.18.weight"] == (512, 256, 5, 4) and shapes["netcnnlip.0.weight"] == (96, 3, 5, 7, 7)
    assert shapes["netcnnlip.18.weight"] == (512, 256, 1, 6, 6) and shapes["netfclip.3.weight"] == (1024, 512)
    assert inception.num_features == 2048
    assert tuple(inception.state_dict()["Mixed_7c.branch3x3dbl_1.conv.weight"].shape) == (448, 2048, 1, 1)
    assert tuple(i3d.state_dict()["logits.conv3d.weight"].shape) == (400, 1024, 1, 1, 1)
    assert tuple(i3d.state_dict()["Mixed_4b.b0.conv3d.weight"].shape) == (192, 480, 1, 1, 1)
    # inputs of the real sizes give one embedding each
    with torch.device("meta"):
        assert sync.forward_video(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)
        assert sync.forward_audio(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)


def test_glo_and_exp_from_landmarks_on_a_real_face():
    pytest.importorskip("dlib")
    data = pytest.importorskip("skimage.data")  # scikit-image's astronaut.png (NASA, public domain): a real face
    import cv2

    from loopy_core.landmarks import FaceLandmarker

    face = cv2.resize(data.astronaut()[20:276, 120:376], (224, 224), interpolation=cv2.INTER_AREA)
    t = np.arange(16)
    moving = np.stack([np.roll(face, int(round(10 * np.sin(2 * np.pi * k / 8))), axis=1) for k in t])
    still = np.repeat(face[None], 16, axis=0)
    landmarker = FaceLandmarker()
    a = suite.keypoint_variance(torch.from_numpy(moving), landmarker)
    b = suite.keypoint_variance(torch.from_numpy(still), landmarker)
    assert a["available"] and b["available"]
    assert b["glo"] < 1e-6 and b["exp"] < 1e-6  # the same image every frame
    expected = np.var(np.round(10 * np.sin(2 * np.pi * t / 8)) / 224) / 2 * 1e3  # x moves, y does not
    assert a["glo"] == pytest.approx(expected, rel=0.25)
    assert a["exp"] < 0.2 * a["glo"] / (0.3**2)  # a shift is head motion, not expression (scale: iod ~0.3 crop)


def test_cli_end_to_end_writes_json_and_markdown(tmp_path, folders, weights_dir, identical, capsys):
    """Other faces (same audio) against the truth, on a split with frame ranges."""
    from loopy_core.cli import main
    from loopy_core.commands.eval_suite import NETWORK_OPTIONS, SPLITS

    assert SPLITS == suite.SPLITS
    assert {k: v[0] for k, v in NETWORK_OPTIONS.items()} == {k: s.option for k, s in suite.NETWORKS.items()}
    split = tmp_path / "hdtf.txt"
    split.write_text("alice 0 32\nbob 8 32\n")
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["eval-suite", "--pred", str(folders / "other"), "--truth", str(folders / "truth"), "--split", "hdtf",
            "--list", str(split), "--weights", str(weights_dir), "--device", "cpu", "--json", str(out),
            "--markdown", str(md)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["split"] == "hdtf" and result["protocol"]["videos"] == 2
    assert [v["pred"]["frames"] for v in result["videos"]] == [32, 24]
    s = result["summary"]
    assert s["fid"]["samples"] == [56, 56] and s["fvd"]["samples"] == [3, 3]
    assert s["fid"]["value"] > 1e-3 and s["fvd"]["value"] > 1e-3  # other faces: the sets differ
    assert s["e_fid"]["samples"] == [56, 56] and s["e_fid"]["value"] > 1e3 * max(identical["summary"]["e_fid"]["value"],
                                                                                1e-9)
    # the truth's own scores do not depend on the pred videos; the pred's do
    alice = result["videos"][0]
    assert alice["truth"]["sync"] == identical["videos"][0]["truth"]["sync"]
    assert alice["pred"]["sync"]["sync_d"] != alice["truth"]["sync"]["sync_d"]
    table = md.read_text()
    assert "| FID |" in table and "| Sync-C |" in table and "(reference set)" in table
    assert f"| E-FID | {s['e_fid']['value']:.4g} | (reference set) |" in table
    assert "| IQA (Q-Align) | not computed |" in table
    err = capsys.readouterr().err
    assert "[1/2] alice: 32 frames, Sync-C" in err and "[2/2] bob: 24 frames" in err
    assert f"SyncNet for Sync-C / Sync-D: {weights_dir / 'syncnet_v2.safetensors'} (found in --weights)" in err
    assert "Deep3DFaceRecon (3D face model) for E-FID: " in err
    # missing weights stop before any video is decoded, unless --skip-missing
    empty = tmp_path / "empty"
    empty.mkdir()
    argv[argv.index(str(weights_dir))] = str(empty)
    assert main(argv) == 2
    assert "SyncNet weights syncnet_v2.safetensors or syncnet_v2.model" in capsys.readouterr().err
    assert main([*argv, "--skip-missing"]) == 0
    skipped = json.loads(out.read_text())["summary"]
    assert not skipped["fid"]["available"] and "no Inception-v3 (FID) weights" in skipped["fid"]["reason"]
    assert not skipped["e_fid"]["available"] and "--face3d PATH" in skipped["e_fid"]["reason"]
    assert not skipped["sync_c"]["available"] and "--syncnet PATH" in skipped["sync_c"]["reason"]
    assert skipped["smoothness"]["available"]
    assert main(["eval-suite", "--pred", str(folders / "pred"), "--truth", str(folders / "truth"), "--split", "hdtf",
                 "--json", str(out)]) == 2
    assert "--split hdtf needs --list FILE" in capsys.readouterr().err


# ---- where weights are found


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # resolve_weights only finds files; loading is tested above
    return path


def test_weights_found_in_env_folder_and_hub_cache_in_order(tmp_path, monkeypatch):
    import huggingface_hub.constants

    env, given, hub = tmp_path / "env", tmp_path / "given", tmp_path / "hub"  # this test's own hub cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    sync_env = _touch(env / "syncnet_v2.model")
    fid_hub = _touch(hub / "models--someone--fid-weights" / "snapshots" / "0123abcd" /
                     "pt_inception-2015-12-05-6726825d.pth")
    _touch(hub / "models--someone--sync" / "snapshots" / "feed" / "syncnet_v2.safetensors")  # after the env folder
    _touch(hub / "models--someone--i3d" / "i3d_kinetics400.safetensors")  # not in a snapshot: not found
    monkeypatch.setenv(eval_weights.ENV_WEIGHTS, str(env))
    lines = []
    found = suite.resolve_weights(None, skip_missing=True, report=lines.append)
    assert found == {"sync": str(sync_env), "fid": str(fid_hub), "fvd": None, "e_fid": None}
    assert f"SyncNet for Sync-C / Sync-D: {sync_env} (found in $LOOPY_EVAL_WEIGHTS)" in lines
    assert f"Inception-v3 (FID) for FID: {fid_hub} (found in Hugging Face hub cache)" in lines
    # --weights comes first, and a place's safetensors before its other name
    sync_given = _touch(given / "syncnet_v2.safetensors")
    _touch(given / "syncnet_v2.model")
    assert suite.resolve_weights(given, skip_missing=True)["sync"] == str(sync_given)
    # an explicit path beats every folder
    face = _touch(tmp_path / "mine" / "face.pth")
    lines.clear()
    assert suite.resolve_weights(given, {"e_fid": str(face)}, skip_missing=True, report=lines.append)["e_fid"] == (
        str(face))
    assert f"Deep3DFaceRecon (3D face model) for E-FID: {face} (given with --face3d)" in lines


def test_weights_found_in_comfyui_models_folder(tmp_path, monkeypatch):
    comfy = tmp_path / "ComfyUI"
    monkeypatch.setattr(eval_weights, "PACKAGE_DIR", comfy / "custom_nodes" / "comfyui-loopy")
    i3d = _touch(comfy / "models" / "loopy_eval" / "i3d_kinetics400.safetensors")
    lines = []
    assert suite.resolve_weights(None, skip_missing=True, report=lines.append)["fvd"] == str(i3d)
    assert f"I3D (Kinetics-400) for FVD: {i3d} (found in ComfyUI models/loopy_eval)" in lines
    # inside ComfyUI's process its folder_paths decides (extra_model_paths.yaml folders included)
    yaml_folder, default = tmp_path / "yaml" / "loopy_eval", tmp_path / "elsewhere" / "models" / "loopy_eval"
    face = _touch(yaml_folder / "epoch_20.pth")
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.folder_names_and_paths = {"loopy_eval": ([str(default), str(yaml_folder)], {".pth"})}
    folder_paths.get_folder_paths = lambda name: list(folder_paths.folder_names_and_paths[name][0])
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    assert eval_weights.comfyui_folders()[0] == [str(default), str(yaml_folder)]
    found = suite.resolve_weights(None, skip_missing=True)
    assert found["e_fid"] == str(face) and found["fvd"] is None  # the custom_nodes guess is not used then
    del folder_paths.folder_names_and_paths["loopy_eval"]  # a ComfyUI that never registered the key
    assert eval_weights.comfyui_folders()[0] == [str(comfy / "models" / "loopy_eval")]


# ---- E-FID


def test_face3d_matches_deep3dfacerecon_layout():
    with torch.device("meta"):
        net = Face3DRecon()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    # torchvision's resnet50 has 320 state-dict entries, fc.weight and fc.bias among them; plus 7 heads x 2
    assert len(shapes) == 320 - 2 + 14
    assert sum(v.numel() for v in net.backbone.parameters()) == 25_557_032 - 2048 * 1000 - 1000
    assert shapes["backbone.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["backbone.layer3.5.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["backbone.layer4.2.bn3.running_var"] == (2048,)
    assert [shapes[f"final_layers.{i}.weight"] for i in range(7)] == [(n, 2048, 1, 1) for _, n in COEFFICIENTS]
    assert [n for _, n in COEFFICIENTS] == [80, 64, 80, 3, 27, 2, 1] and sum(n for _, n in COEFFICIENTS) == 257
    with torch.device("meta"):
        assert net(torch.zeros(2, 3, 224, 224)).shape == (2, 257)
        assert net.expression(torch.zeros(2, 3, 224, 224)).shape == (2, 64)


def test_face3d_checkpoint_loads_and_wrong_files_are_named(tmp_path, weights_dir):
    from loopy_core.eval.weights import load_weights

    torch.manual_seed(0)
    net = Face3DRecon(width=1 / 16)
    # the released epoch_20.pth: net_recon beside the optimizer's and scheduler's states (plain containers)
    opt = torch.optim.Adam(net.final_layers.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    net.final_layers[1](torch.zeros(1, net.backbone.out_channels, 1, 1)).sum().backward()
    opt.step()
    release = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": net.state_dict(), "opt_00": opt.state_dict(), "sched_00": sched.state_dict()}, release)
    state = read_state_dict(release)
    assert set(state) == set(net.state_dict())
    loaded = suite.load_networks({"e_fid": str(release)}).face3d
    assert loaded.width == pytest.approx(1 / 16)
    x = torch.rand(2, 3, 64, 64)  # resized to 224 inside
    assert torch.equal(loaded.expression(x), net.eval().expression(x))
    assert convert_to_safetensors(release, tmp_path / "face3d.safetensors") == len(state)
    # another network's file, heads of other sizes, a missing tensor: each named
    with pytest.raises(ValueError, match=r"E-FID: .*syncnet_v2.safetensors \(--face3d\): not Deep3DFaceRecon"):
        suite.load_networks({"e_fid": str(weights_dir / "syncnet_v2.safetensors")})
    bad = dict(state, **{"final_layers.1.weight": torch.zeros(32, 128, 1, 1), "final_layers.1.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"heads give \(80, 32, 80, 3, 27, 2, 1\) coefficients, expected"):
        Face3DRecon.from_state_dict(bad)
    partial = {k: v for k, v in state.items() if k != "backbone.layer3.1.conv2.weight"}
    with pytest.raises(ValueError, match=r"E-FID: .*does not fit the model: missing keys: backbone.layer3.1.conv2"):
        load_weights(Face3DRecon.from_state_dict(partial), partial, "E-FID: test file")


# ---- IQA through a stand-in for the q_align package


def _fake_qalign(calls: list) -> dict:
    """`q_align.evaluate.scorer.QAlignScorer` as the Q-Align repository has it: built from a weights folder, called
    on a list of PIL images, one score each (here 1, 2, ..., so a video's mean over 8 frames is 4.5)."""

    class QAlignScorer:
        def __init__(self, pretrained, device):
            calls.append((pretrained, device))

        def __call__(self, images):
            assert all(im.size == (suite.CROP_SIZE, suite.CROP_SIZE) for im in images)
            return torch.arange(1, len(images) + 1, dtype=torch.float16)

    modules = {}
    for name in ("q_align", "q_align.evaluate", "q_align.evaluate.scorer"):
        modules[name] = types.ModuleType(name)
        modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name != "q_align.evaluate.scorer")
    modules["q_align.evaluate.scorer"].QAlignScorer = QAlignScorer
    return modules


def test_iqa_reaches_the_reports_and_a_missing_folder_is_named(tmp_path, folders, monkeypatch, capsys):
    from loopy_core.cli import main

    calls = []
    for name, module in _fake_qalign(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    qalign = tmp_path / "q-align-weights"
    qalign.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    out, md = tmp_path / "iqa.json", tmp_path / "iqa.md"
    argv = ["eval-suite", "--pred", str(folders / "other"), "--truth", str(folders / "truth"), "--weights", str(empty),
            "--skip-missing", "--device", "cpu", "--json", str(out), "--markdown", str(md)]
    assert main([*argv, "--qalign", str(qalign)]) == 0
    assert calls == [(str(qalign), "cpu")]
    result = json.loads(out.read_text())
    assert result["summary"]["iqa"] == {"pred": 4.5, "pred_note": "", "truth": 4.5, "truth_note": "",
                                        "available": True}
    assert all(v[side]["iqa"] == {"available": True, "score": 4.5} for v in result["videos"] for side in
               ("pred", "truth"))
    assert "| IQA (Q-Align) | 4.5 | 4.5 | higher |" in md.read_text()
    # no folder given: not computed, said so; a folder that does not exist: stopped before any video decodes
    assert suite.load_networks({}).iqa_reason == "not computed: no Q-Align weights folder given (--qalign DIR)"
    capsys.readouterr()
    assert main([*argv, "--qalign", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert f"Q-Align weights folder not found: {tmp_path / 'absent'} (--qalign)" in err and "[1/" not in err
    with pytest.raises(FileNotFoundError, match="IQA: Q-Align weights folder not found"):
        suite.load_networks({}, qalign=str(tmp_path / "absent"))
