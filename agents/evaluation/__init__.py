"""Evaluating adapters: the base, the right adapter and the routed one on labelled chat data."""

from __future__ import annotations

from .evaluate import (
    EvalReport,
    EvaluationError,
    RoutingReport,
    evaluate,
    load_labelled,
    route_only,
)

__all__ = [
    "EvalReport",
    "EvaluationError",
    "RoutingReport",
    "evaluate",
    "load_labelled",
    "route_only",
]
