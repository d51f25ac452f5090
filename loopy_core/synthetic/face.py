"""The procedural portrait: identity parameters, per-frame face state, and a torch renderer vectorised over frames.

A stylised head on a plain background, drawn back to front as anti-aliased soft shapes (coverage = clamp(0.5 -
signed distance / pixel), with the distance to each ellipse approximated by f / |grad f|):

    background -> hair (an ellipse behind the face, showing above and beside it) -> face (a superellipse that
    narrows towards the chin) -> two eyes (dark ellipses that squash when blinking) -> mouth (a dark red ellipse
    whose height follows the opening and whose width shrinks a little as it opens)

Geometry lives in head coordinates (units of the image size, origin at the head's pivot, y down) and is mapped to
the image by `image = centre + R(roll) @ head`, with `centre = NEUTRAL_CENTRE + (tx, ty)`. Yaw is a hint only: the
eyes and mouth slide sideways by `yaw * YAW_SHIFT * face_width`, the far eye narrows, and the face outline narrows a
little. So in the image, roll > 0 turns the head clockwise, tx > 0 moves it right, ty > 0 moves it down.

Two appearance spaces (`FaceIdentity.random(rng, appearance)`): `plain`, flat colours from small palettes (the
world the demo model was trained in), and `wide`, colours from continuous ranges plus a lighting gradient across
the picture and a smooth multiplicative texture (in head coordinates on hair and skin, so it moves with the head; in
image coordinates on the background), so that a model can only draw an unseen identity by copying its reference.
Both keep their amplitudes under the estimators' colour thresholds (`loopy_core.eval.estimators`).

The eye and mouth colours are the same for every identity (`EYE_RGB`, `MOUTH_RGB`), and identity colours are
sampled away from them and from each other, so the estimators in `loopy_core.eval` can find the features from
pixels alone. Shapes: frames are float [T, H, W, 3] in 0..1 at any square size H = W.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

EYE_RGB = (0.08, 0.20, 0.50)  # cartoon blue eyes: far, in colour, from every skin, hair and the mouth
MOUTH_RGB = (0.72, 0.08, 0.16)
NEUTRAL_CENTRE = (0.5, 0.54)  # head pivot in the image, fractions of width and height
EYE_Y = -0.16  # eye height, as a fraction of the face half-height (negative: above the pivot)
MOUTH_Y = 0.48  # mouth height, as a fraction of the face half-height
YAW_SHIFT = 0.35  # sideways feature shift per unit of yaw, as a fraction of the face half-width
MOUTH_CLOSED = 0.035  # mouth half-height when closed, fraction of the face half-height
MOUTH_RANGE = 0.17  # extra mouth half-height at full opening
_FEATURES = (EYE_RGB, MOUTH_RGB)

_SKIN_TONES = ((0.96, 0.80, 0.69), (0.91, 0.72, 0.58), (0.82, 0.62, 0.47), (0.68, 0.49, 0.36), (0.55, 0.38, 0.27))
_HAIR = ((0.16, 0.12, 0.09), (0.35, 0.22, 0.12), (0.55, 0.40, 0.24), (0.86, 0.74, 0.47), (0.62, 0.62, 0.64))
_BACKGROUNDS = ((0.20, 0.35, 0.60), (0.25, 0.55, 0.45), (0.55, 0.60, 0.68), (0.42, 0.30, 0.55), (0.78, 0.84, 0.86))
APPEARANCES = ("plain", "wide")
TEXTURE_GRID = 7  # control points per unit of head or image coordinates of the smooth texture


@dataclass(frozen=True)
class FaceIdentity:
    """Who is drawn: colours (RGB 0..1) and shape. Lengths are fractions of the image size."""

    skin: tuple[float, float, float] = _SKIN_TONES[1]
    hair: tuple[float, float, float] = _HAIR[1]
    background: tuple[float, float, float] = _BACKGROUNDS[0]
    face_width: float = 0.235  # face half-width
    face_aspect: float = 1.22  # half-height / half-width
    squareness: float = 2.3  # superellipse exponent of the face outline (2 = ellipse)
    chin_taper: float = 0.18  # how much narrower the face gets towards the chin
    hair_volume: float = 1.15  # hair ellipse size relative to the face
    eye_spacing: float = 0.42  # eye centre distance from the axis, fraction of the face half-width
    eye_size: float = 0.17  # eye half-width, fraction of the face half-width
    mouth_width: float = 0.42  # mouth half-width, fraction of the face half-width
    light: tuple[float, float] = (0.0, 0.0)  # brightness change per image width (x) and height (y), centred
    texture: float = 0.0  # amplitude of the smooth multiplicative texture (0 = flat colours)
    texture_seed: int = 0

    @classmethod
    def random(cls, rng: np.random.Generator, appearance: str = "plain") -> FaceIdentity:
        """Draw an identity of the `appearance` space (`plain` or `wide`, see the module docstring); colours are
        kept apart from each other and from the features. `plain` draws exactly what it always drew."""
        if appearance not in APPEARANCES:
            raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
        wide = appearance == "wide"

        def pick(palette, jitter):
            base = np.array(palette[rng.integers(len(palette))])
            return np.clip(base + rng.uniform(-jitter, jitter, 3), 0.0, 1.0)

        def pick_wide(palette):  # anywhere between two palette entries, then a colour cast
            a, b = (np.array(palette[i]) for i in rng.integers(len(palette), size=2))
            return np.clip(a + rng.uniform() * (b - a) + rng.uniform(-0.1, 0.1, 3), 0.0, 1.0)

        while True:
            if wide:
                skin, hair, bg = pick_wide(_SKIN_TONES), pick_wide(_HAIR), rng.uniform(0.05, 0.95, 3)
            else:
                skin, hair, bg = pick(_SKIN_TONES, 0.04), pick(_HAIR, 0.05), pick(_BACKGROUNDS, 0.08)
            pairs = [(skin, hair), (skin, bg), (hair, bg)] + [
                (c, np.array(f)) for c in (skin, hair) for f in _FEATURES
            ]
            if min(np.linalg.norm(a - b) for a, b in pairs) > 0.3:
                break
        extra = {}
        if wide:
            angle = rng.uniform(0, 2 * np.pi)
            strength = rng.uniform(0.0, 0.08)
            extra = dict(light=(round(float(strength * np.cos(angle)), 4), round(float(strength * np.sin(angle)), 4)),
                         texture=round(float(rng.uniform(0.01, 0.04)), 4), texture_seed=int(rng.integers(2**31)))
        return cls(
            skin=tuple(round(float(c), 4) for c in skin),
            hair=tuple(round(float(c), 4) for c in hair),
            background=tuple(round(float(c), 4) for c in bg),
            face_width=round(float(rng.uniform(0.21, 0.26)), 4),
            face_aspect=round(float(rng.uniform(1.1, 1.32)), 4),
            squareness=round(float(rng.uniform(2.0, 2.8)), 4),
            chin_taper=round(float(rng.uniform(0.05, 0.28)), 4),
            hair_volume=round(float(rng.uniform(1.1, 1.22)), 4),
            eye_spacing=round(float(rng.uniform(0.34, 0.5)), 4),
            eye_size=round(float(rng.uniform(0.14, 0.2)), 4),
            mouth_width=round(float(rng.uniform(0.34, 0.5)), 4),
            **extra,
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> FaceIdentity:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown FaceIdentity fields {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class FaceState:
    """Per-frame state, each a float array [T]: what the renderer draws at every frame.

    mouth_open 0..1, mouth_width (multiplier, ~0.75..1), blink 0 (open) .. 1 (closed), tx and ty (fractions of the
    image size), roll (radians, clockwise on screen), yaw (hint units, about -0.3..0.3).
    """

    mouth_open: np.ndarray
    mouth_width: np.ndarray
    blink: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    roll: np.ndarray
    yaw: np.ndarray

    def __post_init__(self) -> None:
        lengths = {f.name: len(np.asarray(getattr(self, f.name))) for f in fields(self)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"FaceState arrays must all have the same length, got {lengths}")

    def __len__(self) -> int:
        return len(self.mouth_open)

    @classmethod
    def neutral(cls, num_frames: int = 1) -> FaceState:
        """Mouth closed, eyes open, head centred and upright."""
        zeros = [np.zeros(num_frames) for _ in range(6)]  # separate arrays, so callers can edit one field
        return cls(zeros[0], np.ones(num_frames), *zeros[1:])

    def as_tensors(self, sl: slice = slice(None)) -> dict[str, torch.Tensor]:
        """The fields of frames `sl` as float32 tensors [t, 1, 1], ready to broadcast over pixels."""
        return {
            f.name: torch.as_tensor(np.asarray(getattr(self, f.name))[sl], dtype=torch.float32)[:, None, None]
            for f in fields(self)
        }


def _coverage(sdf: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage of a shape from its (approximate) signed distance, in image units."""
    return (0.5 - sdf / pixel).clamp(0.0, 1.0)


def _ellipse_sdf(x: torch.Tensor, y: torch.Tensor, a, b, power: float = 2.0) -> torch.Tensor:
    """Approximate signed distance to the superellipse |x/a|^p + |y/b|^p = 1 (negative inside)."""
    ax, ay = (x / a).abs().clamp_min(1e-6), (y / b).abs().clamp_min(1e-6)
    f = ax**power + ay**power - 1.0
    gx = power * ax ** (power - 1) / a
    gy = power * ay ** (power - 1) / b
    return f / torch.sqrt(gx**2 + gy**2).clamp_min(1e-6)


def _paint(image: torch.Tensor, alpha: torch.Tensor, rgb) -> torch.Tensor:
    colour = torch.as_tensor(rgb, dtype=image.dtype, device=image.device)
    return image + alpha[..., None] * (colour - image)


def _texture_grids(identity: FaceIdentity, device: torch.device) -> torch.Tensor:
    """Two smooth noise grids in -1..1, [2, 1, G, G]: the head's and the background's."""
    gen = torch.Generator().manual_seed(identity.texture_seed)
    return (torch.rand(2, 1, TEXTURE_GRID, TEXTURE_GRID, generator=gen) * 2 - 1).to(device)


def _sample_texture(grid: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The noise `grid` [1, 1, G, G] read at coordinates x, y [t, H, W] (one grid spans -0.5..0.5, repeated by
    reflection beyond), bicubic so it is smooth: [t, H, W]."""
    at = torch.stack([x, y], dim=-1) * 2.0  # grid_sample's -1..1 spans one grid
    grid = grid.expand(x.shape[0], -1, -1, -1)
    out = torch.nn.functional.grid_sample(grid, at, mode="bicubic", padding_mode="reflection", align_corners=True)
    return out[:, 0].clamp(-1.0, 1.0)


def _render_chunk(identity: FaceIdentity, state: dict, size: int, device: torch.device) -> torch.Tensor:
    """Frames for one chunk of states (tensors [t, 1, 1]): float [t, size, size, 3]."""
    state = {k: v.to(device) for k, v in state.items()}
    t = state["tx"].shape[0]
    pixel = 1.0 / size
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # [H, W] image y and x
    # 1. image -> head coordinates: p = R(-roll) (u - centre)
    du = u[None] - (NEUTRAL_CENTRE[0] + state["tx"])
    dv = v[None] - (NEUTRAL_CENTRE[1] + state["ty"])
    cos, sin = torch.cos(state["roll"]), torch.sin(state["roll"])
    x, y = cos * du + sin * dv, -sin * du + cos * dv  # [t, H, W]
    fw = identity.face_width
    fh = fw * identity.face_aspect
    yaw = state["yaw"]
    # 2. background and hair (the hair ellipse sits behind the face, raised a little)
    image = torch.tensor(identity.background, device=device).expand(t, size, size, 3).clone()
    hv = identity.hair_volume
    hair = _ellipse_sdf(x, y + 0.16 * fh, fw * hv * (1.0 - 0.04 * yaw.abs()), fh * hv * 0.95)
    image = _paint(image, _coverage(hair, pixel), identity.hair)
    # 3. face: a superellipse narrowing towards the chin
    width = fw * (1.0 - 0.06 * yaw.abs()) * (1.0 - identity.chin_taper * (y / fh).clamp(0.0, 1.0))
    face = _ellipse_sdf(x, y, width, fh, identity.squareness)
    face_alpha = _coverage(face, pixel)
    image = _paint(image, face_alpha, identity.skin)
    if identity.texture or any(identity.light):
        # lighting and texture change brightness multiplicatively; the eyes and mouth, painted next, keep their colours
        head = torch.maximum(_coverage(hair, pixel), face_alpha)
        gain = 1.0 + identity.light[0] * (u[None] - 0.5) + identity.light[1] * (v[None] - 0.5)
        if identity.texture:
            grids = _texture_grids(identity, device)
            still = (u - 0.5).expand_as(x), (v - 0.5).expand_as(x)  # the background's texture stays put
            noise = head * _sample_texture(grids[:1], x, y) + (1 - head) * _sample_texture(grids[1:], *still)
            gain = gain + identity.texture * noise
        image = image * gain[..., None]
    # 4. eyes: the far eye narrows with yaw; blinking squashes them vertically
    shift = yaw * YAW_SHIFT * fw
    ew = identity.eye_size * fw
    eh = ew * 0.75 * (1.0 - 0.92 * state["blink"])
    for side in (-1.0, 1.0):
        ex = side * identity.eye_spacing * fw + shift
        eye = _ellipse_sdf(x - ex, y - EYE_Y * fh, ew * (1.0 + 0.45 * side * yaw), eh)
        image = _paint(image, _coverage(eye, pixel), EYE_RGB)
    # 5. mouth: height from the opening, width from the width multiplier
    mw = identity.mouth_width * fw * state["mouth_width"]
    mh = fh * (MOUTH_CLOSED + MOUTH_RANGE * state["mouth_open"])
    mouth = _ellipse_sdf(x - shift, y - MOUTH_Y * fh, mw, mh)
    return _paint(image, _coverage(mouth, pixel), MOUTH_RGB).clamp(0.0, 1.0)


@torch.no_grad()
def render_faces(
    identity: FaceIdentity, state: FaceState, size: int, device: str | torch.device = "cpu", chunk: int | None = None
) -> torch.Tensor:
    """Draw every frame of `state`: float32 [T, size, size, 3] in 0..1 (on `device`).

    Frames are rendered `chunk` at a time (default: about 4M pixels per chunk) to bound memory at large sizes.
    """
    if int(size) != size or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size}")
    size = int(size)
    device = torch.device(device)
    if chunk is None:
        chunk = max(1, (1 << 22) // (size * size))
    out = torch.empty(len(state), size, size, 3, device=device)
    for s in range(0, len(state), chunk):
        sl = slice(s, min(len(state), s + chunk))
        out[sl] = _render_chunk(identity, state.as_tensors(sl), size, device)
    return out


def neutral_face(identity: FaceIdentity, size: int) -> torch.Tensor:
    """The reference portrait: mouth closed, eyes open, head centred and upright. float [size, size, 3]."""
    return render_faces(identity, FaceState.neutral(1), size)[0]
