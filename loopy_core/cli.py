"""`loopy` command line: argparse -> one library call per subcommand; no model logic lives here.

Each subcommand is a module `loopy_core/commands/<name>.py` with `register(subparsers)`, which adds its parser and
sets `func(args) -> int`. Command modules import heavy libraries inside `func`, so `loopy --help` stays fast.
User errors (bad paths, bad values) print one line and exit with status 2; set LOOPY_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

COMMANDS = ("init", "inspect", "generate", "batch", "demo", "synth", "eval", "eval_suite", "bench", "comfyui_queue")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopy", description="Loopy: audio-driven portrait video diffusion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module_name = f"loopy_core.commands.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, MemoryError) as e:
        if os.environ.get("LOOPY_DEBUG"):
            raise
        print(f"loopy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # out of device memory: the message says what lowers it
        if type(e).__name__ != "LoopyOutOfMemory" or os.environ.get("LOOPY_DEBUG"):
            raise
        print(f"loopy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loopy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
