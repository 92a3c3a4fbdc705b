"""The command line, a thin layer over the public API:
``zstore ls / info / verify / plan / calibrate / rm``."""

from zstore._cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
