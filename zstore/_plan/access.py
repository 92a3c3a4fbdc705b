"""Access patterns: how an array will be read, which is what its layout must serve.

- ``"full"``: everything is loaded (restore for training, a full inference load);
- ``"rows"``: a few rows along dim 0 are gathered (embeddings, vocab, expert tables);
- ``split(dim, parts)``: tensor-parallel ranks each read one of ``parts`` equal
  parts along ``dim`` (sizes as ``torch.chunk``: ``ceil(n / parts)``, the last smaller);
- ``"tensor"``: one whole tensor at a time (a layer, a LoRA base).

``access`` maps name globs to a pattern or a list of them; every glob that
matches a name adds its patterns, and names no glob matches are ``full``. A
glob that matches no name at all is a typo, and an error (``check_globs``):

>>> from zstore._plan.access import patterns_for, split
>>> patterns_for("layers.0.q_proj.weight", {"*embed*": "rows", "*.q_proj.weight": split(0, 8)})
('full', Split(dim=0, parts=8))
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zstore.errors import InvalidKeyError

NAMED = ("full", "rows", "tensor")


@dataclass(frozen=True)
class Split:
    """``parts`` equal parts along ``dim``, one per tensor-parallel rank."""

    dim: int
    parts: int

    def __str__(self) -> str:
        return f"split({self.dim},{self.parts})"

    def part_size(self, extent: int) -> int:
        return max(1, math.ceil(extent / self.parts))


Pattern = str | Split
Access = Pattern | Sequence[Pattern] | Mapping[str, Pattern | Sequence[Pattern]] | None


def split(dim: int, parts: int) -> Split:
    """The access pattern of ``parts`` tensor-parallel ranks each reading its part of ``dim``.

    >>> import zstore
    >>> zstore.split(1, 4)
    Split(dim=1, parts=4)
    """
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"split dim must be an int, got {dim!r}")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"split parts must be a positive int, got {parts!r}")
    return Split(dim, parts)


_SPLIT = re.compile(r"^split\(\s*(-?\d+)\s*,\s*(\d+)\s*\)$")


def parse_pattern(value: Pattern) -> Pattern:
    """A pattern from a ``Split`` or its spelling: ``"full"``, ``"rows"``, ``"tensor"``,
    ``"split(0,8)"``."""
    if isinstance(value, Split):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in NAMED:
            return text
        match = _SPLIT.match(text)
        if match:
            return split(int(match.group(1)), int(match.group(2)))
    raise ValueError(
        f"unknown access pattern {value!r}: use 'full', 'rows', 'tensor' or "
        "zstore.split(dim, parts)"
    )


def _pattern_list(value: Pattern | Sequence[Pattern]) -> list[Pattern]:
    if isinstance(value, (str, Split)):
        return [parse_pattern(value)]
    return [parse_pattern(v) for v in value]


def normalize_access(access: Access) -> dict[str, tuple[Pattern, ...]]:
    """``access`` as {glob: patterns}; a bare pattern or list applies to every name (``"*"``)."""
    if access is None:
        return {}
    if isinstance(access, Mapping):
        normalized = {}
        for glob, value in access.items():
            if not isinstance(glob, str):
                raise TypeError(f"access keys are name globs (str), got {glob!r}")
            normalized[glob] = tuple(_pattern_list(value))
        return normalized
    return {"*": tuple(_pattern_list(access))}


def patterns_for(name: str, access: Access) -> tuple[Pattern, ...]:
    """The patterns one array serves: ``full`` plus those of every matching glob, in order."""
    found: list[Pattern] = ["full"]
    for glob, patterns in normalize_access(access).items():
        if fnmatch.fnmatchcase(name, glob):
            found.extend(p for p in patterns if p not in found)
    return tuple(found)


def check_split(pattern: Split, shape: tuple[int, ...], name: str) -> Split:
    """``pattern`` with a non-negative dim, or an error naming the array and its shape."""
    ndim = len(shape)
    if not -ndim <= pattern.dim < ndim:
        raise ValueError(
            f"{pattern} does not fit {name!r} of shape {shape}: dim must be in [{-ndim}, {ndim})"
        )
    return Split(pattern.dim % ndim, pattern.parts)


def _close_names(glob: str, names: Sequence[str], limit: int = 5) -> list[str]:
    """Names holding a stretch most like ``glob``'s literal text (``*embd*`` finds
    ``embeddings.LayerNorm.weight``, ``*.quary.weight`` finds ``...self.query.weight``)."""
    text = re.sub(r"[*?\[\]]", "", glob)
    if not text:
        return []
    matcher = difflib.SequenceMatcher(a=text)

    def likeness(name: str) -> float:
        best = 0.0
        for width in (len(text), len(text) + 1):
            for start in range(max(1, len(name) - width + 1)):
                matcher.set_seq2(name[start:start + width])
                best = max(best, matcher.ratio())
        return best

    scored = sorted(((likeness(n), n) for n in names), key=lambda s: -s[0])
    return [n for score, n in scored[:limit] if score >= 0.7]


def check_globs(access: Access, names: Sequence[str], what: str = "access") -> None:
    """Raise ``InvalidKeyError`` for a glob of ``access`` that matches none of ``names``.

    A pattern given for every array (no glob) always applies; so does any glob
    when there are no arrays at all.
    """
    if not isinstance(access, Mapping) or not names:
        return
    for glob in normalize_access(access):
        if not any(fnmatch.fnmatchcase(name, glob) for name in names):
            close = _close_names(glob, names)
            hint = (f"close names: {', '.join(map(repr, close))}" if close
                    else f"names look like {', '.join(map(repr, list(names)[:3]))}")
            raise InvalidKeyError(
                f"{what} glob {glob!r} matches no array ({hint}); globs match whole names "
                "case-sensitively (fnmatch), so use '*part*' to match a part of a name",
                key=glob)
