"""Saving and loading a router's fitted state (a folder: ``state.json`` + ``head.npz``).

The state records a format version, the encoder name and the route-set digest it was fitted
on; loading checks all three, so state fitted on other routes or another encoder is detected.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import Calibration
from .context import ContextConfig
from .errors import RouterStateError
from .head import LogisticHead

if TYPE_CHECKING:
    from .router import Router

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STALE_POLICIES = ("refit", "error", "ignore")


def save_state(router: Router, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    st = router._state()
    fit = router.fit_data
    doc = {
        "format_version": FORMAT_VERSION,
        "encoder": router.encoder.name,
        "scoring": router.scoring,
        "scorer": router.scorer,
        "knn_m": router.knn_m,
        "alias": router.alias,
        "route_digest": router._fit_digest or st.digest,
        "routes": st.names,
        "calibration": router.calibration.to_dict(),
        "overrides": router.overrides,
        "oos_weight": router.oos_weight,
        "min_oos_recall": router.min_oos_recall,
        "context": vars(router.context),
        "fit": {"texts": fit.texts, "labels": fit.labels} if fit else None,
    }
    if st.head is not None:
        tmp = folder / f".head.{os.getpid()}.npz"
        np.savez(tmp, weight=st.head.weight, bias=st.head.bias)
        os.replace(tmp, folder / "head.npz")
    else:
        (folder / "head.npz").unlink(missing_ok=True)
    tmp = folder / f".state.{os.getpid()}.json"
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
    os.replace(tmp, folder / "state.json")
    return folder


def read_state(folder: Path) -> dict[str, Any]:
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
    return doc


def load_state(
    cls: type[Router], folder: Path, registry: Any, *, on_stale: str, **kwargs: Any
) -> Router:
    from .router import FitData

    if on_stale not in STALE_POLICIES:
        raise ValueError(f"on_stale {on_stale!r} is not one of {', '.join(STALE_POLICIES)}")
    doc = read_state(folder)
    kwargs.setdefault("scoring", doc["scoring"])
    kwargs.setdefault("alias", doc.get("alias", "prod"))
    kwargs.setdefault("oos_weight", doc.get("oos_weight", 0.25))
    kwargs.setdefault("min_oos_recall", doc.get("min_oos_recall"))
    kwargs.setdefault("context", ContextConfig(**doc["context"]))
    router = cls(registry, **kwargs)
    if router.encoder.name != doc["encoder"]:
        raise RouterStateError(
            f"router state {str(folder)!r} was fitted with encoder {doc['encoder']!r}, but this "
            f"router uses {router.encoder.name!r}; load with the same encoder or re-fit"
        )
    router.calibration = Calibration.from_dict(doc["calibration"])
    # The thresholds belong to the scorer and neighbour count they were picked for (states
    # written before "auto" existed name a concrete scoring, which is its own scorer).
    router.scorer = doc.get("scorer", router.scorer) if router.scoring == "auto" else router.scorer
    if router._choose_m and doc.get("knn_m"):
        router.knn_m = int(doc["knn_m"])
    router.overrides = {k: float(v) for k, v in doc.get("overrides", {}).items()}
    fit = doc.get("fit")
    st = router._state()
    if doc["route_digest"] == st.digest:
        router.fit_data = FitData(fit["texts"], fit["labels"]) if fit else None
        if router.fit_data is not None:  # neighbours from the stored fit data (cached vectors)
            st = router._compiled = router._attach_fit(st, router.fit_data, train_head=False)
        head_path = folder / "head.npz"
        if head_path.is_file():
            with np.load(head_path) as z:
                st.head = LogisticHead(weight=z["weight"], bias=z["bias"])
        router._fit_digest = st.digest
        return router
    msg = (
        f"router state {str(folder)!r} was fitted on routes {doc['route_digest'][:19]}... "
        f"({len(doc['routes'])} routes) but the registry now serves {st.digest[:19]}... "
        f"({len(st.routes)} routes)"
    )
    if on_stale == "error":
        raise RouterStateError(msg + "; re-fit with 'adapters route fit DATA'")
    if on_stale == "refit" and fit:
        logger.warning("%s; re-fitting from the stored fit data", msg)
        router.fit(fit["texts"], fit["labels"])
    else:
        logger.warning("%s; keeping thresholds, the head is rebuilt from routing examples", msg)
    return router
