"""Batch generation: one manifest row per video, one model load per process, resumable, split across processes by
accelerate (GPUs, machines, or CPU processes over gloo) rather than by a scheduler of our own.

    loopy batch --manifest jobs.csv --out DIR [--model CKPT] [the sampling flags of `loopy generate`]
    python -m loopy_core.batch --manifest jobs.csv --out DIR ...        (the same command)
    accelerate launch [--num_processes N] -m loopy_core.batch --manifest jobs.csv --out DIR ...

The manifest is a CSV file with a header. Columns (`MANIFEST_COLUMNS`): `image` and `audio` (required; relative
paths are read from the manifest's folder), and optional `output` (a .mp4 name inside DIR, subfolders allowed;
default `<image stem>_<audio stem>.mp4`), `seed`, `audio_cfg`, `ref_cfg` (a scale or a schedule "6,4,2"),
`guidance_interval`, `steps`, `scheduler` and `crop`; an empty cell takes the command line's value. Rows are
numbered as a spreadsheet shows them (the header is row 1).

1. The whole manifest is checked before any model loads: columns, that every file exists, values (seed >= 0,
   1 <= steps <= 1000, no negative guidance, a known scheduler, crop auto/none) and that no two rows write the same
   output. A problem is a `ManifestError` naming the row and column of each bad cell.
2. Row k (0-based) goes to process k % N (`accelerate.PartialState`): disjoint, deterministic shares, so no two
   processes write one file, and a row gives the same video whichever process renders it (its seed is the row's).
3. Each process loads the model once, then renders its rows one after another through `render.render_video`
   (clip by clip into the mp4: memory bounded by one clip, not by the video's length). Outputs are written
   atomically, so an output that is present is complete: a killed batch resumes by skipping those rows (`exists`).
4. A row that fails (an unreadable image or audio, silent audio, ...) is recorded with its error and the batch goes
   on. Each process appends its rows to its own part file as they finish; after `wait_for_everyone` the main
   process merges the parts into `DIR/batch_report.csv` (columns `REPORT_COLUMNS`, one line per manifest row).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from .pipeline import GenerationOptions

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "audio")
OPTION_COLUMNS = ("seed", "audio_cfg", "ref_cfg", "guidance_interval", "steps", "scheduler", "crop")
MANIFEST_COLUMNS = REQUIRED_COLUMNS + ("output",) + OPTION_COLUMNS
REPORT_NAME = "batch_report.csv"
REPORT_COLUMNS = ("row", "image", "audio", "output", "status", "error", "frames", "seconds", "elapsed_s", "process")
MAX_REPORTED_ERRORS = 20
# processes that finish their share early wait at the final barrier for the slowest one; a big batch can take days
BARRIER_TIMEOUT = timedelta(days=7)


class ManifestError(ValueError):
    """The manifest can't run as written; the message names every bad cell by row and column."""


@dataclass(frozen=True)
class Job:
    """One manifest row, checked: where its files are, where its video goes, and how it is sampled."""

    row: int  # as a spreadsheet numbers it: the header is row 1
    image: Path
    audio: Path
    output: str  # relative to the output folder
    options: GenerationOptions
    crop: str


def _parse_int(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range {low}..{high}")
    return value


def _parse_cell(column: str, text: str) -> dict[str, Any]:
    """One option cell -> the `GenerationOptions` fields (or `crop`) it sets; ValueError says what is wrong."""
    from .config import NoiseConfig
    from .guidance import parse_interval, parse_scale
    from .pipeline import make_scheduler

    if column == "seed":
        return {"seed": _parse_int(text, 0, 2**63 - 1)}
    if column == "steps":
        return {"steps": _parse_int(text, 1, 1000)}
    if column == "audio_cfg":
        return {"audio_guidance_scale": parse_scale(text)}
    if column == "ref_cfg":
        return {"ref_guidance_scale": parse_scale(text)}
    if column == "guidance_interval":
        return {"guidance_interval": parse_interval(text)}
    if column == "scheduler":
        make_scheduler(text, NoiseConfig())
        return {"scheduler": text}
    if column == "crop":
        if text not in ("auto", "none"):
            raise ValueError(f"{text!r} is not 'auto' or 'none'")
        return {"crop": text}
    raise KeyError(column)


def _check_output(text: str) -> str:
    path = Path(text)
    if path.is_absolute() or ".." in path.parts or not path.name:
        raise ValueError(f"{text!r} must be a file name inside the output folder (subfolders allowed, no '..')")
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"{text!r} must end in .mp4")
    return path.as_posix()


def read_manifest(path: str | os.PathLike, options: GenerationOptions | None = None, crop: str = "auto") -> list[Job]:
    """Every row of the manifest at `path` as a checked `Job`; `options` and `crop` fill the empty cells.

    Raises `ManifestError` listing each bad cell ("jobs.csv row 3, column 'audio': file 'x.wav' not found") before
    anything loads; files are only checked to exist here, reading them is the row's own work."""
    path = Path(path)
    options = options or GenerationOptions()
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path.name!r} not found in {str(path.parent.resolve())!r}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            lines = [(reader.line_num, cells) for cells in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path.name}: not a readable CSV file ({e})") from e
    name = path.name
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"{name}: no {' or '.join(repr(c) for c in missing)} column (the header row has "
                            f"{', '.join(repr(h) for h in header) or 'nothing'}); the columns are "
                            f"{', '.join(MANIFEST_COLUMNS)}")
    unknown = [h for h in header if h not in MANIFEST_COLUMNS]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if unknown or repeated:
        problem = (f"unknown column(s) {', '.join(repr(h) for h in unknown)}" if unknown
                   else f"column(s) {', '.join(repr(h) for h in repeated)} appear more than once")
        raise ManifestError(f"{name}: {problem} in the header; the columns are {', '.join(MANIFEST_COLUMNS)}")

    errors: list[str] = []
    jobs: list[Job] = []
    outputs: dict[str, int] = {}
    base_dir = path.parent
    for row, cells in lines:
        if not any(c.strip() for c in cells):
            continue  # a blank line
        where = f"{name} row {row}"
        if len(cells) != len(header):
            errors.append(f"{where}: {len(cells)} cells but the header has {len(header)}")
            continue
        record = {h: c.strip() for h, c in zip(header, cells)}
        bad = len(errors)
        files = {}
        for column in REQUIRED_COLUMNS:
            if not record[column]:
                errors.append(f"{where}, column {column!r}: empty; give a file path")
                continue
            file = base_dir / record[column]
            if not file.exists():
                errors.append(f"{where}, column {column!r}: file {record[column]!r} not found "
                              f"(looked in {str(file.parent.resolve())!r})")
            elif not file.is_file():
                errors.append(f"{where}, column {column!r}: {record[column]!r} is a folder, not a file")
            files[column] = file
        fields: dict[str, Any] = {"crop": crop}
        for column in OPTION_COLUMNS:
            if record.get(column):
                try:
                    fields.update(_parse_cell(column, record[column]))
                except ValueError as e:
                    errors.append(f"{where}, column {column!r}: {e}")
        output = record.get("output") or (f"{Path(record['image']).stem}_{Path(record['audio']).stem}.mp4"
                                          if record["image"] and record["audio"] else "")
        try:
            output = _check_output(output) if output else ""
        except ValueError as e:
            errors.append(f"{where}, column 'output': {e}")
        key = output.casefold()  # one file on case-insensitive file systems too
        if output and key in outputs:
            column = "output" if record.get("output") else "image/audio (the default output name)"
            errors.append(f"{where}, column {column}: {output!r} is also the output of row {outputs[key]}; give "
                          "each row its own 'output' name")
        elif output:
            outputs[key] = row
        if len(errors) == bad:
            crop_value = fields.pop("crop")
            jobs.append(Job(row, files["image"], files["audio"], output, dataclasses.replace(options, **fields),
                            crop_value))
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise ManifestError(f"{len(errors)} problem(s) in the manifest, nothing was run:\n" + "\n".join(shown) + more)
    if not jobs:
        raise ManifestError(f"{name}: no rows under the header; add one row per video")
    return jobs


def _share(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Process `index` of `count` takes rows index, index + count, ...: disjoint and the same on every run."""
    return jobs[index::count]


def _part_path(out_dir: Path, index: int, count: int) -> Path:
    return out_dir / f".{REPORT_NAME}.part-{index}-of-{count}"


def _write_report(out_dir: Path, count: int) -> Path:
    """Merge the processes' part files into `batch_report.csv` (atomically, sorted by row) and remove them."""
    from .video import make_temp_path

    rows = []
    for index in range(count):
        part = _part_path(out_dir, index, count)
        if part.is_file():
            with open(part, newline="", encoding="utf-8") as f:
                rows.extend(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["row"]))
    report = out_dir / REPORT_NAME
    tmp = make_temp_path(str(report), ".csv")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, REPORT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, report)
    except BaseException:
        os.remove(tmp)
        raise
    for part in out_dir.glob(f".{REPORT_NAME}.part-*"):
        part.unlink()
    return report


def read_report(out_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of `DIR/batch_report.csv`."""
    with open(Path(out_dir) / REPORT_NAME, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _remove_stale_temp_files(out_dir: Path, jobs: list[Job]) -> None:
    """Temp videos a killed run left behind (a finished video is renamed away from its temp name)."""
    for folder in {(out_dir / job.output).parent for job in jobs}:
        for stale in folder.glob(".tmp-*.mp4"):
            logger.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)


def _render_job(job: Job, pipeline, out_dir: Path, fps, max_seconds, progress: bool) -> dict:
    from .image import load_image
    from .render import check_audio, render_video
    from .video import load_audio

    image = load_image(job.image)
    waveform, sample_rate = load_audio(job.audio)
    check_audio(waveform, sample_rate, max_seconds)
    target = out_dir / job.output
    target.parent.mkdir(parents=True, exist_ok=True)
    return render_video(pipeline, image, waveform, sample_rate, target, job.options, max_seconds, progress, fps=fps,
                        crop=job.crop, desc=f"row {job.row}")


def run_batch(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str | os.PathLike,
    options: GenerationOptions | None = None,
    crop: str = "auto",
    base: str | os.PathLike | None = None,
    audio_encoder: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    fps: float | None = None,
    max_seconds: float | None = 600.0,
    channels_last: bool = False,
    compile: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> dict:
    """Render every row of `manifest` that has no output yet into `out_dir` (this process's share of them).

    `callback(event)` hears `{"event": "start", ...}` once, `{"event": "row", ...}` after each row (its status
    `done`, `exists` or `failed`, and counts) and `{"event": "end", ...}`. Returns the end event: this process's
    counts, and on the main process the merged report's path and counts over all rows."""
    import torch
    from accelerate import PartialState

    from .render import load_pipeline

    # 1. the whole manifest, before any model (every process checks it: all fail alike, none waits at a barrier)
    options = options or GenerationOptions()
    options.check()
    jobs = read_manifest(manifest, options, crop)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notify = callback or (lambda event: None)
    # 2. this process's share
    # without CUDA, accelerate runs its processes on the CPU over gloo only when asked for the CPU
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    index, count = state.process_index, state.num_processes
    if state.is_main_process:
        _remove_stale_temp_files(out_dir, jobs)
    state.wait_for_everyone()  # no process starts a video before the stale temp files are gone
    mine = _share(jobs, index, count)
    notify({"event": "start", "rows": len(jobs), "mine": len(mine), "process": index, "processes": count,
            "done_already": sum((out_dir / job.output).is_file() for job in mine)})
    # 3. one model load, only if a row of this share still needs rendering
    pipeline = None
    counts = {"done": 0, "exists": 0, "failed": 0}
    part = _part_path(out_dir, index, count)
    start = time.perf_counter()
    with open(part, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, REPORT_COLUMNS)
        writer.writeheader()
        for k, job in enumerate(mine):
            record = {"row": job.row, "image": str(job.image), "audio": str(job.audio), "output": job.output,
                      "process": index}
            began = time.perf_counter()
            if (out_dir / job.output).is_file():
                record["status"] = "exists"
            else:
                if pipeline is None:
                    target_device = str(state.device) if device in (None, "auto") else device
                    pipeline = load_pipeline(model, base, audio_encoder, target_device, dtype).optimize(
                        channels_last=channels_last, compile=compile)
                try:
                    result = _render_job(job, pipeline, out_dir, fps, max_seconds, progress)
                except Exception as e:  # the row fails, the batch goes on; KeyboardInterrupt still stops it
                    logger.debug("row %d failed", job.row, exc_info=True)
                    record.update(status="failed", error=str(e) or type(e).__name__)
                else:
                    record.update(status="done", frames=result["frames"], seconds=f"{result['seconds']:.3f}")
            record["elapsed_s"] = f"{time.perf_counter() - began:.2f}"
            writer.writerow(record)
            f.flush()
            counts[record["status"]] += 1
            notify({"event": "row", **record, "index": k + 1, "mine": len(mine), "processes": count})
    # 4. the main process merges the parts once every process has finished its share
    end = {"event": "end", "process": index, "processes": count, **counts,
           "elapsed_s": time.perf_counter() - start}
    state.wait_for_everyone()
    if state.is_main_process:
        report = _write_report(out_dir, count)
        statuses = [r["status"] for r in read_report(out_dir)]
        end.update(report=str(report), rows=len(statuses),
                   totals={s: statuses.count(s) for s in ("done", "exists", "failed")})
    notify(end)
    return end


def main(argv: list[str] | None = None) -> int:
    """`python -m loopy_core.batch ...` and `accelerate launch -m loopy_core.batch ...`: `loopy batch ...`."""
    from .cli import main as cli_main

    return cli_main(["batch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
