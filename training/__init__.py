"""Standalone training of Loopy (both stages) with accelerate, data preprocessing and export.

Run from the repository root: `python -m training.train --config training/configs/synthetic_tiny.yaml`, or
`accelerate launch -m training.train --config ...` on several devices.
"""
