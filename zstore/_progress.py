"""Progress bars for long saves and loads: on a terminal, above a size, or when asked.

tqdm draws them when it is installed (``pip install 'zstore[progress]'``);
``progress=None`` (the default) shows one only for work above ``THRESHOLD``
bytes with stderr attached to a terminal, so logs and notebooks stay quiet.
"""

from __future__ import annotations

import sys
from typing import Any

THRESHOLD = 256 << 20


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, progress: bool | None) -> Any:
    """An object with ``update(nbytes)`` and ``close()``; a silent one unless a bar is due."""
    wanted = progress if progress is not None else (
        total >= THRESHOLD and sys.stderr.isatty())
    if not wanted:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm: pip install 'zstore[progress]'") from None
        return _Silent()
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr)
