"""Face crop and paste-back (`loopy_core.face`), `--crop auto` in `loopy generate`, and the two face nodes."""

from __future__ import annotations

import importlib.util
import inspect
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loopy_core import face
from loopy_core.face import CropInfo, crop, crop_box, detect_face, feather_mask, largest_box, paste_back
from loopy_core.image import load_image

PORTRAIT = Path(face.__file__).resolve().parent / "assets" / "demo" / "portrait.png"


def photo(height=121, width=161, at=(30, 70), bg=0.6) -> np.ndarray:
    """The bundled 64x64 demo portrait (Haar finds its face) on a plain background of another size."""
    canvas = np.full((height, width, 3), bg, np.float32)
    canvas[at[0] : at[0] + 64, at[1] : at[1] + 64] = load_image(PORTRAIT)
    return canvas


def noise(height=90, width=130, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


# ---- detection


def test_detects_the_face_in_a_portrait_on_a_larger_canvas():
    pytest.importorskip("cv2")
    box = detect_face(photo(at=(30, 70)))
    assert box is not None
    x, y, w, h = box
    assert 70 <= x and x + w <= 134 and 30 <= y and y + h <= 94 and w >= 24  # inside the pasted portrait
    info = crop_box((121, 161), box)
    assert info.found and info.side == min(121, round(1.8 * max(w, h)))


def test_largest_of_several_faces():
    assert largest_box([(0, 0, 10, 10), (50, 40, 30, 25), (5, 5, 20, 20)]) == (50, 40, 30, 25)
    assert largest_box([]) is None
    pytest.importorskip("cv2")
    small = load_image(PORTRAIT)
    big = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(128, 128),
                                          mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    canvas = np.full((300, 400, 3), 0.5, np.float32)
    canvas[100:228, 20:148] = big
    canvas[10:74, 300:364] = small
    x, y, w, h = detect_face(canvas)
    assert 20 <= x and x + w <= 148 and 100 <= y and y + h <= 228


def test_no_face_falls_back_to_the_centre_square(caplog):
    with caplog.at_level(logging.INFO, logger="loopy_core.face"):
        info = face.face_crop_info(np.full((90, 130, 3), 0.5, np.float32))
    assert info == CropInfo(20, 0, 90, 90, 130, False)
    assert "no face found" in caplog.text


def test_missing_cv2_warns_and_falls_back(monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("no cv2")
        return real_import(name, *args, **kwargs)

    face._cascade.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_cv2)
    try:
        with caplog.at_level(logging.WARNING, logger="loopy_core.face"):
            assert detect_face(photo()) is None
        assert "opencv-python-headless" in caplog.text
    finally:
        monkeypatch.undo()
        face._cascade.cache_clear()


# ---- geometry


@pytest.mark.parametrize(
    "shape,box,expected",
    [
        ((200, 300), (130, 80, 40, 40), CropInfo(114, 64, 72, 200, 300, True)),  # centred on the face
        ((200, 300), (0, 0, 40, 40), CropInfo(0, 0, 72, 200, 300, True)),  # shifted inside at the corner
        ((200, 300), (270, 170, 30, 30), CropInfo(246, 146, 54, 200, 300, True)),  # other corner
        ((100, 300), (100, 10, 90, 90), CropInfo(95, 0, 100, 100, 300, True)),  # shrunk to the short side
        ((80, 60), None, CropInfo(0, 10, 60, 80, 60, False)),  # no face: centre square
    ],
)
def test_crop_box_geometry(shape, box, expected):
    info = crop_box(shape, box)
    assert info == expected
    info.check()


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="margin"):
        crop_box((10, 10), (1, 1, 2, 2), margin=0)
    with pytest.raises(ValueError, match=r"\(1, 1, 0, 2\)"):
        crop_box((10, 10), (1, 1, 0, 2))
    info = crop_box((90, 130), None)
    with pytest.raises(ValueError, match="130x90 image, but the image is 100x90"):
        crop(noise(90, 100), info, 32)
    with pytest.raises(ValueError, match="feather"):
        feather_mask(info, 0.9)
    with pytest.raises(ValueError, match=r"\(2, 5, 4, 3\)"):
        paste_back(noise(90, 130), torch.zeros(2, 5, 4, 3), info)


def test_crop_resizes_the_square():
    img = noise()
    info = CropInfo(10, 20, 60, 90, 130, True)
    exact = crop(img, info, 60)
    assert torch.equal(exact, torch.from_numpy(img[20:80, 10:70]))
    small = crop(img, info, 32)
    assert small.shape == (32, 32, 3) and small.dtype == torch.float32 and 0 <= small.min() and small.max() <= 1


# ---- paste-back


def test_feather_ramp_is_monotonic_and_only_at_inner_edges():
    info = CropInfo(0, 20, 50, 100, 120, True)  # left edge on the image border, the others inside
    mask = feather_mask(info, 0.1)
    ramp = 0.1 * 50
    row = mask[25]
    assert torch.all(row[:25] == 1)  # left edge is the image border: no feather
    assert torch.all(torch.diff(row[25:]) <= 0) and row[-1] < 0.1  # right edge ramps down
    col = mask[:, 25]
    assert torch.all(torch.diff(col[:25]) >= 0) and col[0] < 0.1 and torch.all(col[int(ramp) + 1 : -int(ramp) - 1] == 1)
    assert torch.all(feather_mask(info, 0.0) == 1)


def test_paste_back_of_an_unchanged_crop_reproduces_the_original():
    img = noise()
    info = CropInfo(30, 15, 60, 90, 130, True)
    frames = crop(img, info, 60)[None].repeat(3, 1, 1, 1)
    same = paste_back(img, frames, info, match=False)
    assert same.shape == (3, 90, 130, 3)
    assert torch.equal(same, torch.from_numpy(img)[None].expand(3, -1, -1, -1))
    matched = paste_back(img, frames, info)  # the colour match of a perfect crop is the identity
    assert (matched - same).abs().max() < 1e-6
    # through the model's resolution and back: exact outside the crop, close inside it
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(img).permute(2, 0, 1)[None], 9, 1, 4,
                                            count_include_pad=False)[0].permute(1, 2, 0).numpy()
    out = paste_back(smooth, crop(smooth, info, 48)[None], info)[0]
    outside = np.ones((90, 130), bool)
    outside[15:75, 30:90] = False
    assert torch.equal(out[outside], torch.from_numpy(smooth)[outside])
    assert (out - torch.from_numpy(smooth)).abs().max() < 0.05


def test_paste_back_blends_at_the_seam():
    img = np.zeros((90, 130, 3), np.float32)
    info = CropInfo(30, 15, 60, 90, 130, True)
    out = paste_back(img, torch.ones(1, 60, 60, 3), info, feather=0.1, match=False)[0, ..., 0]
    assert torch.all(out[30:60, 45:75] == 1)  # the middle is the frame
    assert 0 < out[45, 30] < 0.2 and 0 < out[15, 60] < 0.2  # the edge is mostly the original
    assert torch.all(torch.diff(out[45, 30:45]) >= 0)


def test_paste_back_keeps_the_old_call():
    img, info = noise(), CropInfo(30, 15, 60, 90, 130, True)
    frames = torch.full((2, 32, 32, 3), 0.5)
    assert torch.equal(paste_back(img, frames, info, 0.08), paste_back(img, frames, info, feather=0.08, match=True))


def test_seam_step_measures_the_added_edge():
    img = noise() * 0.6 + 0.1  # room for +0.2 without clipping
    info = CropInfo(30, 15, 60, 90, 130, True)
    assert face.seam_step(torch.from_numpy(img), img, info) == 0
    brighter = crop(img, info, 60)[None] + 0.2
    hard = paste_back(img, brighter, info, feather=0.0, match=False)
    assert face.seam_step(hard, img, info, width=3) == pytest.approx(0.2, abs=1e-5)  # a hard step of 0.2
    soft = paste_back(img, brighter, info, feather=face.FEATHER, match=False)  # inside ring: the ramp, half blended
    assert 0.07 < face.seam_step(soft, img, info) < 0.1  # a bit under half: the corners, where two ramps meet
    with pytest.raises(ValueError, match=r"\[T, 90, 130, 3\]"):
        face.seam_step(torch.zeros(1, 90, 100, 3), img, info)


def real_photo() -> np.ndarray:
    """A real, non-square photo: scikit-image's astronaut (a test extra) cut to 440x512, else the demo portrait on
    a textured gradient."""
    try:
        from skimage import data
    except ImportError:
        canvas = photo(181, 241, at=(60, 90))
        yy, xx = np.mgrid[0:181, 0:241] / 240.0
        canvas += 0.1 * np.sin(9 * xx + 4 * yy)[..., None] * (canvas == 0.6)
        return canvas
    return data.astronaut()[:, 40:480].astype(np.float32) / 255.0


def test_colour_matched_paste_hides_the_seam_on_a_photo():
    """A crop with another colour and brightness (as the model returns it, through 64 px) pasted into a photo:
    the colour-matched, wider-feathered seam steps far less than the un-matched one, the photo outside the crop is
    untouched and the video has the photo's size."""
    img = real_photo()
    info = face.face_crop_info(img)
    assert info.left > 0 or info.top > 0  # some edge inside the photo, where a seam can show
    off = crop(img, info, 64) * torch.tensor([0.8, 0.85, 0.7]) + torch.tensor([0.1, 0.02, 0.08])
    frames = (off[None] + 0.01 * torch.randn(4, 64, 64, 3, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    old = paste_back(img, frames, info, feather=0.08, match=False)  # before issue 24
    wide = paste_back(img, frames, info, match=False)
    new = paste_back(img, frames, info)
    assert new.shape == (4, *img.shape)
    outside = torch.ones(img.shape[:2], dtype=torch.bool)
    outside[info.top : info.top + info.side, info.left : info.left + info.side] = False
    assert torch.equal(new[:, outside], torch.from_numpy(img)[outside].expand(4, -1, -1))
    width = round(face.FEATHER * info.side)
    step_old, step_wide, step_new = (face.seam_step(v, img, info, width) for v in (old, wide, new))
    assert step_old > 0.03  # the crop really is off
    assert step_new < 0.3 * step_old and step_new < 0.5 * step_wide, (step_old, step_wide, step_new)
    # the interior moved toward the photo too
    box = (slice(None), slice(info.top, info.top + info.side), slice(info.left, info.left + info.side))
    truth = torch.from_numpy(img)[box[1:]]
    assert (new[box] - truth).abs().mean() < 0.7 * (old[box] - truth).abs().mean()


def test_colour_match_once_per_video():
    """The estimate kept from the first clip is used as it is for the next; no evidence gives the identity; a
    match for another crop size is refused."""
    img = noise() * 0.5
    info = CropInfo(30, 15, 60, 90, 130, True)
    first, second = torch.full((2, 32, 32, 3), 0.7), torch.full((2, 32, 32, 3), 0.9)
    match = face.colour_match(img, first, info)
    assert torch.all(match.gain < 1)  # the crops are brighter than the photo's band
    kept = paste_back(img, second, info, match=match)
    assert torch.equal(kept, paste_back(img, second, info, match=face.colour_match(img, first, info)))
    assert not torch.allclose(kept, paste_back(img, second, info))  # a fresh estimate would have moved
    square = CropInfo(0, 0, 90, 90, 90, True)  # the whole image: no edge to match at
    identity = face.colour_match(noise(90, 90), first, square)
    assert torch.equal(identity.gain, torch.ones(3)) and torch.equal(identity.offset, torch.zeros(90, 90, 3))
    with pytest.raises(ValueError, match="60-px crop, but the crop is 90 px"):
        paste_back(noise(90, 90), first, square, match=match)


# ---- CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from loopy_core.audio import tiny_wav2vec2
    from loopy_core.checkpoint import save_checkpoint
    from loopy_core.config import LoopyConfig
    from loopy_core.models import LoopyModel
    from loopy_core.video import save_wav

    root = tmp_path_factory.mktemp("face")
    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    ckpt = save_checkpoint(LoopyModel(cfg), root / "tiny.safetensors", audio_encoder=tiny_wav2vec2(cfg.audio))
    Image.fromarray((photo() * 255).round().astype(np.uint8)).save(root / "photo.png")  # 161x121
    t = np.arange(int(0.4 * 16000)) / 16000
    save_wav(root / "speech.wav", (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 16000)
    return root, ckpt


def test_crop_flag_defaults():
    import argparse

    from loopy_core.commands import demo, generate

    sub = argparse.ArgumentParser().add_subparsers()
    generate.register(sub)
    demo.register(sub)
    parse = sub._name_parser_map
    base = ["--image", "a.png", "--audio", "a.wav", "--out", "o.mp4", "--model", "m.safetensors"]
    assert parse["generate"].parse_args(base).crop == "auto"
    assert parse["generate"].parse_args(base + ["--crop", "none"]).crop == "none"
    assert parse["demo"].parse_args([]).crop is None  # demo picks: auto for --image, none for its portrait
    assert parse["demo"].parse_args(["--crop", "none"]).crop == "none"
    with pytest.raises(SystemExit):
        parse["generate"].parse_args(base + ["--crop", "face"])


def test_generate_crops_the_face_and_keeps_the_photo_size(files, tmp_path):
    """`loopy generate` (default `--crop auto`) on a 161x121 photo: a 160x120 video, the photo outside the face."""
    from loopy_core.cli import main
    from loopy_core.video import read_video

    root, ckpt = files
    out = tmp_path / "out.mp4"
    argv = ["generate", "--quiet", "--image", str(root / "photo.png"), "--audio", str(root / "speech.wav"),
            "--out", str(out), "--model", str(ckpt), "--steps", "1", "--device", "cpu"]
    assert main(argv) == 0
    video = read_video(out)
    assert video.frames.shape[1:] == (120, 160, 3)  # 161x121 rounded down to even
    original = (photo()[:120, :160] * 255).round()
    corner = np.asarray(video.frames[0][:8, :8], np.float32)  # far from the face: the original photo
    assert np.abs(corner - original[:8, :8]).mean() < 8


# ---- nodes


def _graph():
    spec = importlib.util.spec_from_file_location("_loopy_tests_comfy_graph", Path(__file__).with_name("comfy_graph.py"))
    cg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cg)
    return cg


def test_face_nodes_declarations_and_round_trip():
    cg = _graph()
    pack = cg.load_pack()
    crop_node, paste_node = pack.NODE_CLASS_MAPPINGS["LoopyFaceCrop"], pack.NODE_CLASS_MAPPINGS["LoopyPasteBack"]
    assert crop_node.RETURN_TYPES[1] == "LOOPY_CROP" == paste_node.INPUT_TYPES()["required"]["crop_info"][0]
    for cls in (crop_node, paste_node):
        required = cls.INPUT_TYPES()["required"]
        assert list(inspect.signature(getattr(cls, cls.FUNCTION)).parameters)[1:] == list(required)
        assert all(spec[1].get("tooltip") for spec in required.values())
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    image = torch.from_numpy(photo())[None]
    square, info = crop_node().crop(image=image, size=64, margin=1.8)
    assert square.shape == (1, 64, 64, 3) and isinstance(info, CropInfo) and (info.height, info.width) == (121, 161)
    assert info.found == (detect_face(photo()) is not None)
    frames = square.repeat(2, 1, 1, 1)
    (video,) = paste_node().paste(image=image, frames=frames, crop_info=info, feather=0.08, colour_match=True,
                                  even_size=False)
    assert video.shape == (2, 121, 161, 3)
    (even,) = paste_node().paste(image=image, frames=frames, crop_info=info, feather=0.15, colour_match=True,
                                 even_size=True)
    assert even.shape == (2, 120, 160, 3)  # what H.264 in Save Video takes
    outside = torch.ones(121, 161, dtype=torch.bool)
    outside[info.top : info.top + info.side, info.left : info.left + info.side] = False
    assert torch.equal(video[:, outside], image[:, outside].expand(2, -1, -1))  # untouched outside the crop
    assert (video - image).abs().mean() < 0.02  # an unchanged crop pastes back to (nearly) the photo
