"""Evaluation from pixels: estimators for the synthetic world and the video quality metrics (`loopy eval`).

- `estimators`: `measure_faces` (mouth opening, head pose, blinks per frame), `estimate_mouth_opening`,
  `estimate_head_pose`;
- `metrics`: `evaluate_video` (sync, motion, identity drift, seam jitter, smoothness) and `format_report`.
"""

from __future__ import annotations

from .estimators import FaceMeasurements, estimate_head_pose, estimate_mouth_opening, measure_faces
from .metrics import (
    best_lag_correlation,
    dominant_period,
    evaluate_video,
    format_report,
    identity_drift,
    identity_fidelity,
    motion_smoothness,
    seam_jitter,
)

__all__ = [
    "FaceMeasurements",
    "best_lag_correlation",
    "dominant_period",
    "estimate_head_pose",
    "estimate_mouth_opening",
    "evaluate_video",
    "format_report",
    "identity_drift",
    "identity_fidelity",
    "measure_faces",
    "motion_smoothness",
    "seam_jitter",
]
