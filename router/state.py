"""A router's fitted state on disk (a folder: ``state.json`` + ``head.npz``).

:class:`SavedState` is what :meth:`Router.save <loraroute.router.Router.save>` writes and
:meth:`Router.load <loraroute.router.Router.load>` reads back; this module only reads and
writes it. The state records a format version, the encoder name and the route-set digest it was
fitted on, so state fitted on other routes or another encoder is detected when loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RouterStateError

FORMAT_VERSION = 1
STALE_POLICIES = ("refit", "error", "ignore")


@dataclass
class FitData:
    """The labelled requests a router was fitted on (``None``: out of scope)."""

    texts: list[str]
    labels: list[str | None]


@dataclass
class SavedState:
    """Everything a fitted router keeps; ``head`` is the logistic head's (weight, bias)."""

    encoder: str
    scoring: str
    scorer: str
    knn_m: int | None
    alias: str
    route_digest: str
    routes: list[str]
    calibration: dict[str, Any]
    overrides: dict[str, float]
    oos_weight: float
    min_oos_recall: float | None
    context: dict[str, Any]
    fit: FitData | None
    head: tuple[np.ndarray, np.ndarray] | None = None


def write_state(folder: Path, state: SavedState) -> Path:
    """Write ``state`` into ``folder`` (each file replaced atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "format_version": FORMAT_VERSION,
        "encoder": state.encoder,
        "scoring": state.scoring,
        "scorer": state.scorer,
        "knn_m": state.knn_m,
        "alias": state.alias,
        "route_digest": state.route_digest,
        "routes": state.routes,
        "calibration": state.calibration,
        "overrides": state.overrides,
        "oos_weight": state.oos_weight,
        "min_oos_recall": state.min_oos_recall,
        "context": state.context,
        "fit": {"texts": state.fit.texts, "labels": state.fit.labels} if state.fit else None,
    }
    if state.head is not None:
        tmp = folder / f".head.{os.getpid()}.npz"
        np.savez(tmp, weight=state.head[0], bias=state.head[1])
        os.replace(tmp, folder / "head.npz")
    else:
        (folder / "head.npz").unlink(missing_ok=True)
    tmp = folder / f".state.{os.getpid()}.json"
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
    os.replace(tmp, folder / "state.json")
    return folder


def read_state(folder: Path) -> SavedState:
    """The state saved in ``folder``; :class:`RouterStateError` when it is missing, not JSON,
    or of another format version."""
    path = folder / "state.json"
    if not path.is_file():
        raise RouterStateError(
            f"no router state at {str(folder)!r} (state.json missing); fit one with "
            f"'adapters route fit DATA' or Router.fit(...).save(path)"
        )
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RouterStateError(f"router state {str(path)!r} is not valid JSON: {exc}") from exc
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise RouterStateError(
            f"router state {str(path)!r} has format version {version!r}; this loraroute reads "
            f"version {FORMAT_VERSION}; re-fit with 'adapters route fit DATA'"
        )
    fit = doc.get("fit")
    head = None
    head_path = folder / "head.npz"
    if head_path.is_file():
        with np.load(head_path) as z:
            head = (z["weight"], z["bias"])
    try:
        return SavedState(
            encoder=doc["encoder"],
            scoring=doc["scoring"],
            # states written before "auto" existed name a concrete scoring, its own scorer
            scorer=doc.get("scorer", doc["scoring"]),
            knn_m=doc.get("knn_m"),
            alias=doc.get("alias", "prod"),
            route_digest=doc["route_digest"],
            routes=list(doc.get("routes", [])),
            calibration=doc["calibration"],
            overrides={k: float(v) for k, v in doc.get("overrides", {}).items()},
            oos_weight=doc.get("oos_weight", 0.25),
            min_oos_recall=doc.get("min_oos_recall"),
            context=doc["context"],
            fit=FitData(fit["texts"], fit["labels"]) if fit else None,
            head=head,
        )
    except (KeyError, TypeError) as exc:
        raise RouterStateError(
            f"router state {str(path)!r} lacks {exc}; re-fit with 'adapters route fit DATA'"
        ) from exc
