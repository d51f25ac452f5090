"""Subcommands of the `loopy` CLI, one module each, registered by `loopy_core.cli`."""
