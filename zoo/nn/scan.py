"""Layer patterns that differ across depth, scanned over their repeating group.

A model whose layers come in kinds (dense / MoE, local / global) is split into a few
segments, each one group of kinds repeated ``reps`` times: ``lax.scan`` runs the reps,
the group is unrolled inside the body. A periodic pattern is one segment; an
irregular one (say, a dense first layer) a handful, so compile time stays flat in depth.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Segment:
    start: int                 # first layer
    group: tuple[str, ...]     # kinds of one repetition
    reps: int

    @property
    def stop(self) -> int:
        return self.start + len(self.group) * self.reps


def _reps(kinds: Sequence[str], start: int, g: int) -> int:
    group, r = tuple(kinds[start:start + g]), 1
    while tuple(kinds[start + r * g:start + (r + 1) * g]) == group:
        r += 1
    return r


def plan_segments(kinds: Sequence[str]) -> tuple[Segment, ...]:
    """Greedy cover: at each layer take the group (repeated at least twice, or a single
    layer) that covers the most layers; ties go to the shorter group."""
    kinds = tuple(kinds)
    out, i = [], 0
    while i < len(kinds):
        best = (1, _reps(kinds, i, 1))
        for g in range(2, (len(kinds) - i) // 2 + 1):
            r = _reps(kinds, i, g)
            if r >= 2 and g * r > best[0] * best[1]:
                best = (g, r)
        g, r = best
        out.append(Segment(i, kinds[i:i + g], r))
        i += g * r
    return tuple(out)


__all__ = ["Segment", "plan_segments"]
