"""What the router decided for one request."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Evidence:
    """A routing example that pulled the request towards ``route``."""

    route: str
    text: str
    similarity: float


@dataclass(frozen=True)
class RouteDecision:
    """The adapter to wear (``None``: the base model) and why.

    ``score`` is the scorer's raw score for the chosen route (for ``None``, the best route's
    score, which fell below its threshold); ``confidence`` is a calibrated probability that
    the decision is right (when the router was fitted; else a monotone squash of the score);
    ``alternatives`` are the next routes with their scores, best first; ``evidence`` the
    nearest routing examples; ``truncated`` says the request was cut to the encoder window.

    Example::

        >>> d = RouteDecision(adapter=None, ref=None, digest=None, score=0.1, confidence=0.9)
        >>> d.to_dict()["adapter"] is None
        True
    """

    adapter: str | None
    ref: str | None
    digest: str | None
    score: float
    confidence: float
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    truncated: bool = False
    reason: str = (
        ""  # "routed", "below_threshold", "no_routes", "empty_request", "kept_previous", ...
    )
    best: str | None = None  # the best-scoring route even when abstaining
    #: the request's (last user turn's) unit vector, for the decision log; not in to_dict()
    embedding: Any = field(default=None, repr=False, compare=False)

    @property
    def margin(self) -> float | None:
        """The score's lead over the runner-up route (None with one route)."""
        return float(self.score - self.alternatives[0][1]) if self.alternatives else None

    @property
    def is_base(self) -> bool:
        return self.adapter is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, embedding=None))
        d.pop("embedding")
        d["alternatives"] = [[name, score] for name, score in self.alternatives]
        return d
