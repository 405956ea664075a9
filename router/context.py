"""Routing over a conversation: decayed weighting of earlier user turns, plus hysteresis.

The previous route is derived from the conversation itself (the decision is replayed turn by
turn), so routing stays stateless; :class:`~.session.RouteSession` keeps it between calls
instead.

Per user turn ``t`` (oldest first), with own scores ``s_t`` and context scores
``c_t = sum_j decay**(t-j) * s_j / sum_j decay**(t-j)``:

- the turn has its own signal (best own score >= that route's threshold):
  switch to its best route, unless that is not the previous route and beats the previous
  route's own score by less than ``margin`` while the previous route is still plausible
  (own score >= its threshold - ``margin``): then keep the previous route;
- no own signal: a follow-up (at most ``followup_words`` words, "and the second one?") or a
  turn whose context score still clears the previous route's threshold keeps the previous
  route; otherwise, if the context scores clear some route's threshold, that route; else base.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ContextConfig:
    """How earlier user turns count. ``decay`` 0 routes on the current turn alone."""

    decay: float = 0.5
    margin: float = 0.15
    followup_words: int = 6
    max_turns: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"context decay must be in [0, 1], got {self.decay}")
        if self.margin < 0:
            raise ValueError(f"context margin must be >= 0, got {self.margin}")
        if self.max_turns < 1:
            raise ValueError(f"context max_turns must be >= 1, got {self.max_turns}")


@dataclass
class TurnScores:
    scores: np.ndarray  # (turns, routes)
    thresholds: np.ndarray  # (routes,)
    words: list[int] = field(default_factory=list)


def route_conversation(
    ts: TurnScores, cfg: ContextConfig, previous: int | None = None
) -> tuple[int | None, float, str]:
    """``(route index or None, score, reason)`` for the last turn, replaying earlier ones."""
    prev = previous
    choice: int | None = None
    score, reason = 0.0, ""
    n = len(ts.scores)
    start = n - 1 if previous is not None else 0  # a given previous route replaces the replay
    for t in range(start, n):
        own = ts.scores[t]
        weights = cfg.decay ** np.arange(t, -1, -1, dtype=np.float64)
        ctx = (weights[:, None] * ts.scores[: t + 1]).sum(0) / weights.sum()
        best = int(np.argmax(own))
        if own[best] >= ts.thresholds[best]:
            if (
                prev is not None
                and prev != best
                and own[best] - own[prev] < cfg.margin
                and own[prev] >= ts.thresholds[prev] - cfg.margin
            ):
                choice, score, reason = prev, float(own[prev]), "kept_previous"
            else:
                choice, score = best, float(own[best])
                reason = "routed" if prev in (None, best) else "switched"
        elif prev is not None and (
            ts.words[t] <= cfg.followup_words or ctx[prev] >= ts.thresholds[prev]
        ):
            choice, score, reason = prev, float(ctx[prev]), "follow_up"
        else:
            cbest = int(np.argmax(ctx))
            if t > 0 and ctx[cbest] >= ts.thresholds[cbest]:
                choice, score, reason = cbest, float(ctx[cbest]), "context"
            else:
                choice, score, reason = None, float(own[best]), "below_threshold"
        prev = choice
    return choice, score, reason
