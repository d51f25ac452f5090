"""SyncNet lip-sync scores (Sync-C, Sync-D): the standard two-branch network, its MFCC input and the offset search.

Chung & Zisserman, "Out of time: automated lip sync in the wild" (ACCV 2016 workshops). The network is the layout of
the community's `syncnet_v2` weights (state-dict names `netcnnaud.*`, `netfcaud.*`, `netcnnlip.*`, `netfclip.*`):
- audio branch: MFCC `[B, 1, 13, 20]` (13 coefficients x 20 steps of 10 ms = 0.2 s) -> 2-D convs -> `[B, 1024]`;
- video branch: 5 face-crop frames `[B, 3, 5, 224, 224]` (0..255, BGR channel order, as the weights were trained)
  -> 3-D then per-frame convs -> `[B, 1024]`.
`width` scales every channel count (1.0 is the real network; tests build tiny random ones); it is read back from a
weights file's first layer.

Scores (the protocol of the paper's Table 1/2, as in syncnet_python's evaluation): for each 5-frame window i of a
25 fps video and each offset j in [-vshift, vshift] (vshift = 15 frames), the Euclidean distance between the video
embedding at i and the audio embedding at i + j (embeddings past either end are zeros); distances are averaged over i
per offset, giving the curve d(j). Then
    Sync-D = min_j d(j)                    (lower is better),
    Sync-C = median_j d(j) - min_j d(j)    (confidence; higher is better),
    offset = -argmin_j d(j)                (frames, syncnet_python's sign: -L when the audio window that matches video
                                            window i is window i + L, i.e. the sound comes L frames after the mouth).

*Reconstructed*: the MFCC is python_speech_features' recipe (pre-emphasis 0.97, 25 ms rectangular frames every 10
ms, 512-point FFT, 26 HTK mel filters, natural log, orthonormal DCT-II, cepstral lifter 22, c0 replaced by the log
frame energy, audio on the int16 scale) rebuilt from torchaudio's pieces; its frames are not padded at the end, so
the last window may differ by one frame from the reference code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
MFCC_RATE = 100  # MFCC steps per second (10 ms hop)
FPS = 25.0
WINDOW = 5  # video frames per embedding
MFCC_STEPS = WINDOW * MFCC_RATE // int(FPS)  # 20 MFCC steps per 5-frame window
VSHIFT = 15  # the offset search covers +-15 frames
CROP = 224  # video-branch input side


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class SyncNet(nn.Module):
    """The syncnet_v2 two-branch network (module docstring); `width` scales the channels, `embed_dim` the output."""

    def __init__(self, width: float = 1.0, embed_dim: int = 1024) -> None:
        super().__init__()
        c = {n: _scaled(n, width) for n in (64, 96, 192, 256, 384, 512)}
        self.width, self.embed_dim = float(width), int(embed_dim)

        def conv2d(cin: int, cout: int, kernel=3, padding=1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        def conv3d(cin: int, cout: int, kernel, stride=1, padding=0) -> list[nn.Module]:
            return [nn.Conv3d(cin, cout, kernel, stride, padding), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]

        def head(cin: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(cin, cin), nn.BatchNorm1d(cin), nn.ReLU(inplace=True),
                                 nn.Linear(cin, embed_dim))

        # audio: [B, 1, 13, 20] -> [B, 512w, 1, 1]
        self.netcnnaud = nn.Sequential(
            *conv2d(1, c[64]), nn.MaxPool2d(1, 1),
            *conv2d(c[64], c[192]), nn.MaxPool2d(3, (1, 2)),
            *conv2d(c[192], c[384]),
            *conv2d(c[384], c[256]),
            *conv2d(c[256], c[256]), nn.MaxPool2d(3, 2),
            *conv2d(c[256], c[512], (5, 4), 0),
        )
        self.netfcaud = head(c[512])
        # video: [B, 3, 5, 224, 224] -> [B, 512w, 1, 1, 1]
        self.netcnnlip = nn.Sequential(
            *conv3d(3, c[96], (5, 7, 7), (1, 2, 2)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *conv3d(c[96], c[256], (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *conv3d(c[256], c[256], (1, 3, 3), 1, (0, 1, 1)),
            *conv3d(c[256], c[256], (1, 3, 3), 1, (0, 1, 1)),
            *conv3d(c[256], c[256], (1, 3, 3), 1, (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *conv3d(c[256], c[512], (1, 6, 6)),
        )
        self.netfclip = head(c[512])

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> SyncNet:
        """An un-loaded network whose width and embedding size fit `state` (a syncnet_v2-layout state dict)."""
        first, last = state.get("netcnnaud.0.weight"), state.get("netfcaud.3.weight")
        if first is None or last is None:
            raise ValueError("not SyncNet weights: no netcnnaud.0.weight / netfcaud.3.weight (syncnet_v2 layout)")
        return cls(width=first.shape[0] / 64, embed_dim=last.shape[0])

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """`[B, 1, 13, 20]` MFCC -> `[B, embed_dim]`."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        """`[B, 3, 5, 224, 224]` (0..255, BGR) -> `[B, embed_dim]`."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def mfcc(waveform: Any, sample_rate: int) -> torch.Tensor:
    """`[N]` mono waveform (float, -1..1) -> `[13, S]` MFCC at 100 steps a second (recipe in the module docstring)."""
    import torchaudio

    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).flatten()
    if sample_rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, int(sample_rate), SAMPLE_RATE)
    wave = torchaudio.functional.preemphasis(wave * 32768.0, 0.97)  # the int16 scale the weights saw
    win, hop, n_fft = SAMPLE_RATE * 25 // 1000, SAMPLE_RATE // MFCC_RATE, 512
    if wave.numel() < win:
        return torch.zeros(13, 0)
    frames = wave.unfold(0, win, hop)  # [S, 400], rectangular window
    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2) / n_fft  # [S, 257]
    fbank = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, SAMPLE_RATE / 2, 26, SAMPLE_RATE, None, "htk")
    tiny = torch.finfo(torch.float32).eps
    log_mel = (power @ fbank).clamp_min(tiny).log()  # [S, 26]
    dct = torchaudio.functional.create_dct(13, 26, "ortho")  # [26, 13]
    cep = log_mel @ dct
    cep = cep * (1.0 + 11.0 * torch.sin(math.pi * torch.arange(13) / 22.0))  # lifter 22
    cep[:, 0] = power.sum(1).clamp_min(tiny).log()  # c0 -> log frame energy
    return cep.T.contiguous()


def sync_curve(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """`[N, D]` video and `[N, D]` audio embeddings -> `[N, 2 vshift + 1]` distances; column j pairs video window i
    with audio window i + j - vshift (zeros past the ends)."""
    if video_emb.shape != audio_emb.shape or video_emb.ndim != 2:
        raise ValueError(f"embeddings must both be [N, D], got {tuple(video_emb.shape)} and {tuple(audio_emb.shape)}")
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))  # [N + 2 vshift, D]
    windows = padded.unfold(0, 2 * vshift + 1, 1)  # [N, D, 2 vshift + 1]
    return torch.linalg.vector_norm(video_emb[:, :, None] - windows, dim=1)


def sync_scores(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> dict:
    """Sync-C, Sync-D and the offset from the offset-distance curve (module docstring)."""
    curve = sync_curve(video_emb.double(), audio_emb.double(), vshift).mean(0)  # [2 vshift + 1]
    best = int(curve.argmin())
    return {
        "sync_c": float(curve.median() - curve[best]),
        "sync_d": float(curve[best]),
        "offset_frames": vshift - best,
        "windows": int(video_emb.shape[0]),
    }


@torch.no_grad()
def embed(
    net: SyncNet, crops: torch.Tensor, coeffs: torch.Tensor, batch: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Face crops `[T, 224, 224, 3]` uint8 RGB at 25 fps and their MFCC `[13, S]` -> video and audio embeddings
    `[N, D]` for the N = min(T, S // 4) - 5 windows that both cover (syncnet_python's count)."""
    device = next(net.parameters()).device
    n = min(crops.shape[0], coeffs.shape[1] // (MFCC_STEPS // WINDOW)) - WINDOW
    if n < 1:
        raise ValueError(f"too short for SyncNet: {crops.shape[0]} frames and {coeffs.shape[1]} MFCC steps give no "
                         f"{WINDOW}-frame window")
    video, audio = [], []
    for s in range(0, n, batch):
        idx = torch.arange(s, min(n, s + batch))
        clip = crops[s : idx[-1] + WINDOW].to(device).flip(-1).float()  # RGB -> BGR, 0..255: [t, 224, 224, 3]
        windows = clip.unfold(0, WINDOW, 1).permute(0, 3, 4, 1, 2)  # [b, 3, 5, 224, 224]
        video.append(net.forward_video(windows))
        steps = MFCC_STEPS // WINDOW
        a = torch.stack([coeffs[:, i * steps : i * steps + MFCC_STEPS] for i in idx.tolist()])  # [b, 13, 20]
        audio.append(net.forward_audio(a[:, None].to(device)))
    return torch.cat(video).cpu(), torch.cat(audio).cpu()
