"""Multi-rank saves: which rank holds what of each global array, which writes each object,
and the save's own bounded collectives."""

from zstore._ranks.group import Ranks
from zstore._ranks.regions import Box, Part, assign, holders, local_part, object_boxes

__all__ = ["Box", "Part", "Ranks", "assign", "holders", "local_part", "object_boxes"]
