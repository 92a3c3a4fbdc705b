"""The command line, a thin layer over the public API: ``zstore ls / info / verify / plan / calibrate / rm``."""

from zstore._cli.main import main

__all__ = ["main"]
