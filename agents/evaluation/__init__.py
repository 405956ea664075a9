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
from .metrics import Metric, get_metric, register_metric
from .tasks import registry_records

__all__ = [
    "EvalReport",
    "EvaluationError",
    "Metric",
    "RoutingReport",
    "evaluate",
    "get_metric",
    "load_labelled",
    "register_metric",
    "registry_records",
    "route_only",
]
