"""`loopy comfyui-queue`: queue a folder of portraits + speech in a running ComfyUI, one prompt per pair, with a
shipped workflow (the work itself is `loopy_core.comfy_queue`)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from ..comfy_queue import DEFAULT_SERVER, DEFAULT_WORKFLOW, OUTPUT_FOLDER

    p = sub.add_parser("comfyui-queue", help="queue a folder of portraits + speech in a running ComfyUI (HTTP API)",
                       epilog=f"Videos land in ComfyUI's output/{OUTPUT_FOLDER}/<name>_*.mp4.")
    p.add_argument("--folder", required=True, help="portraits and their speech, paired by name (face.png + face.wav)")
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"ComfyUI's address (default {DEFAULT_SERVER})")
    p.add_argument("--workflow", default=str(DEFAULT_WORKFLOW),
                   help="UI workflow with LoadImage, LoadAudio and SaveVideo nodes (default: the shipped "
                        "workflows/loopy_demo.json)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="set a node input in every prompt, e.g. LoopyLongVideo.steps=10 (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait until every prompt has run and list the videos")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..comfy_queue import ComfyClient, parse_overrides, queue_folder

    def report(event: dict) -> None:
        if event["event"] == "queued":
            print(f"queued [{event['index']}/{event['total']}] {event['image']} + {event['audio']}: prompt "
                  f"{event['prompt_id']}", flush=True)
        else:
            files = ", ".join(f"{o.get('subfolder', '')}/{o['filename']}".lstrip("/") for o in event["outputs"])
            print(f"{event['status']} [{event['index']}/{event['total']}] {event['image']}: {files or 'no output'}",
                  flush=True)

    try:
        jobs = queue_folder(args.folder, ComfyClient(args.server), args.workflow, parse_overrides(args.set),
                            args.wait, report)
    except (ConnectionError, RuntimeError) as e:
        print(f"loopy comfyui-queue: error: {e}", file=sys.stderr)
        return 2
    return 1 if any(job.get("status") == "error" for job in jobs) else 0
