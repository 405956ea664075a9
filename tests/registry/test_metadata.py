"""Metadata that SQL or JSON cannot hold (NUL, lone surrogates, NaN) is refused with a clear
error before anything is written: a 4xx over HTTP, never a 500 (PostgreSQL included)."""

from __future__ import annotations

import httpx
import pytest

from loraroute.registry import InvalidAdapterError
from loraroute.registry.auth import create_token

BAD_META = {
    "NUL in description": {"description": "a\x00b"},
    "lone surrogate in an example": {"routing_examples": ["ok", "\ud800"]},
    "NaN metric": {"metrics": {"loss": float("nan")}},
    "bool metric": {"metrics": {"loss": True}},
    "newline in domain": {"domain": "law\nand order"},
    "surrogate in training config key": {"training_config": {"\udc00": 1}},
    "unknown parent": {"parent": "legal@\u0661"},
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_local_push_refuses_unstorable_metadata(store, tiny_adapter, case):
    with pytest.raises(InvalidAdapterError, match="metadata of 'legal' was refused"):
        store.push(tiny_adapter, "legal", **BAD_META[case])
    assert store.list() == [] and store.revision() == "0"


def test_legacy_metadata_forms_still_accepted(store, tiny_adapter):
    v = store.push(tiny_adapter, "legal", tags={"epoch": 3}, metrics={"loss": 1, "eval": None})
    assert v.tags == {"epoch": "3"} and v.metrics == {"loss": 1.0}


RAW_BODIES = [
    b'{"files": [], "meta": {"description": "a\\u0000b"}}',
    b'{"files": [], "meta": {"description": "\\ud800"}}',
    b'{"files": [], "meta": {"routing_examples": ["\\udfff"]}}',
    b'{"files": [], "meta": {"metrics": {"loss": NaN}}}',
    b'{"files": [], "meta": {"tags": {"\\u0000": "x"}}}',
    b'{"files": [], "meta": {"training_config": {"a": "\\ud800"}}}',
    b'{"files": [{"path": "a\\u0000b", "digest": "sha256:' + b"1" * 64 + b'", "size": 1}]}',
]


def test_http_push_refuses_unstorable_metadata(store, serve):
    from loraroute.registry.server import create_app

    token = create_token(store, "write")
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    with serve(create_app(store)) as srv:
        for body in RAW_BODIES:
            r = httpx.post(srv.url + "/v1/adapters/legal/versions", content=body, headers=headers)
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        for params in ({"domain": "a\x00b"}, {"tag": "\x00"}, {"base": "x\x00"}, {"name": "\x00"}):
            r = httpx.get(srv.url + "/v1/versions", params=params, headers=headers)
            assert r.status_code == 400, (params, r.status_code, r.text)
    assert store.list() == []
