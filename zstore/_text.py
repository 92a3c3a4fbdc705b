"""Numbers and tables for people: what the CLI and ``Plan`` print."""

from __future__ import annotations

from collections.abc import Sequence


def size(n: float) -> str:
    """Bytes in binary units: ``size(3 << 20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def duration_range(low: float, high: float) -> str:
    """Two durations in the unit of the larger: ``duration_range(0.05, 0.2) == '50-200 ms'``."""
    if high < 1e-3:
        return f"{low * 1e6:.0f}-{high * 1e6:.0f} us"
    if high < 1:
        digits = 1 if high < 0.01 else 0
        return f"{low * 1e3:.{digits}f}-{high * 1e3:.{digits}f} ms"
    return f"{low:.2f}-{high:.2f} s"


def contents(arrays: int, inline: int) -> str:
    """What a checkpoint holds, in the words every report uses: *arrays* are stored zarr
    arrays (a tied tensor once), *inline values* the 0-d tensors and numpy scalars kept in
    the manifest. ``contents(15, 1) == '15 arrays + 1 inline value'``."""
    return (f"{arrays} array{'s' * (arrays != 1)} + "
            f"{inline} inline value{'s' * (inline != 1)}")


def age(seconds: float) -> str:
    """How long ago, in the largest unit that keeps it short: ``age(5400) == '1.5 h'``."""
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"


def shape(dims: Sequence[int] | None) -> str:
    return "-" if dims is None else "x".join(map(str, dims)) or "()"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])
