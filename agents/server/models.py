"""``GET /v1/models``: base, ``auto``, registry adapters and aliases, and what is loaded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .auth import require_key
from .backends import _run
from .errors import APIError
from .protocol import ERROR_RESPONSES, ModelCard, ModelList
from .state import ServerState, State


def _card(id: str, created: int, *, root: str | None, parent: str | None, **extra: Any) -> dict:
    return {
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "loraroute",
        "root": root,
        "parent": parent,
        "loraroute": extra,
    }


async def list_models(st: ServerState) -> list[dict[str, Any]]:
    """Model cards in vLLM's shape (adapters have ``parent`` = the base entry)."""
    backend = st.backend
    created = st.started
    cards = [
        _card(
            "base",
            created,
            root=backend.base_model,
            parent=None,
            kind="base",
            base_model=backend.base_model,
            fingerprint=backend.base_fingerprint,
        )
    ]
    cards.append(
        _card(
            "auto",
            created,
            root=None,
            parent="base",
            kind="router",
            routes=[r.name for r in st.router.routes] if st.router is not None else [],
            note="routes each request to the best adapter, or base",
        )
    )
    runtime = await backend.adapter_cards()
    resident = {c["id"] for c in runtime}
    resident_digests = {c["digest"] for c in runtime if c.get("digest")}
    seen = {"base", "auto"}
    registry = backend.registry
    if registry is not None:
        try:
            versions = await _run(registry.list)
        except Exception as exc:  # noqa: BLE001 - the registry's own error, reported as 503
            raise APIError(
                503, f"the adapter registry cannot be listed: {exc}", code="registry_unavailable"
            ) from exc
        latest: dict[str, Any] = {}
        for v in versions:
            latest[v.name] = v  # sorted by name then number: the last one wins
            for alias in v.aliases:
                cid = f"{v.name}:{alias}"
                cards.append(_version_card(cid, "alias", v, resident, resident_digests))
                seen.add(cid)
        for name, v in latest.items():
            cards.append(_version_card(name, "adapter", v, resident, resident_digests))
            seen.add(name)
    for c in runtime:
        if c["id"] not in seen:
            cards.append(
                _card(
                    c["id"],
                    created,
                    root=c["id"],
                    parent="base",
                    kind=c["kind"],
                    digest=c.get("digest"),
                    resident=True,
                )
            )
    return cards


def _version_card(cid: str, kind: str, v: Any, resident: set[str], digests: set[str]) -> dict:
    created = int(v.created_at.timestamp()) if getattr(v, "created_at", None) else 0
    return _card(
        cid,
        created,
        root=v.ref,
        parent="base",
        kind=kind,
        ref=v.ref,
        digest=v.digest,
        domain=v.domain,
        resident=v.digest in digests or v.ref in resident,
    )


router = APIRouter(dependencies=[Depends(require_key)])


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def models(st: State) -> dict[str, Any]:
    return {"object": "list", "data": await list_models(st)}


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def model(model_id: str, st: State) -> dict[str, Any]:
    for card in await list_models(st):
        if card["id"] == model_id:
            return card
    raise APIError(
        404,
        f"the model {model_id!r} does not exist; GET /v1/models lists base, auto, adapters "
        f"and aliases",
        code="model_not_found",
        param="model",
    )
