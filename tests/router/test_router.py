"""Router behaviour with the tiny hashing encoder (no model download)."""

from __future__ import annotations

import pytest

from loraroute.router import (
    HashingEncoder,
    InvalidRequestError,
    RouteDecision,
    Router,
    RouterError,
    RouterStateError,
    StaticRoutes,
)

ROUTES = {
    "legal": [
        "is this contract clause enforceable",
        "what does the indemnity clause cover",
        "can my landlord terminate the lease",
        "liability under the agreement",
    ],
    "math": [
        "solve the equation 2x plus 3 equals 7",
        "what is the derivative of x squared",
        "compute the integral of sin x",
        "how many apples if she buys 3 more",
    ],
    "medical": [
        "what are the symptoms of diabetes",
        "is this medicine safe during pregnancy",
        "how is hypertension treated",
        "side effects of the vaccine",
    ],
}


@pytest.fixture
def router(lr_home):
    return Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512), refresh_interval=0)


def test_routes_to_matching_domain(router):
    assert router.route("solve the equation 5x equals 10").adapter == "math"
    assert router.route("symptoms of hypertension").adapter == "medical"
    d = router.route("is the indemnity clause in my contract enforceable")
    assert d.adapter == "legal" and d.reason == "routed"
    assert 0.0 <= d.confidence <= 1.0
    assert [name for name, _ in d.alternatives] and all(n != "legal" for n, _ in d.alternatives)
    assert d.evidence and d.evidence[0].route == "legal"
    assert isinstance(d.to_dict()["alternatives"], list)


def test_below_threshold_goes_to_base(router):
    router.set_threshold(None, 10.0)
    d = router.route("solve the equation 5x equals 10")
    assert d.adapter is None and d.ref is None and d.reason == "below_threshold"
    assert d.best == "math"


def test_per_route_threshold(router):
    router.set_threshold("math", 10.0)
    assert router.route("solve the equation 5x equals 10").adapter is None
    assert router.route("symptoms of hypertension").adapter == "medical"


def test_bad_input_never_crashes(router):
    for text in ["", "   \n\t"]:
        d = router.route(text)
        assert d.adapter is None and d.reason == "empty_request"
    long = router.route("solve the equation " * 20000)  # ~380k characters
    assert long.truncated and long.adapter == "math"
    assert router.route("🙂🙂 日本語のテキスト ¿qué tal?").reason in ("routed", "below_threshold")
    with pytest.raises(InvalidRequestError, match="role"):
        router.route([{"role": "wizard", "content": "hi"}])
    with pytest.raises(InvalidRequestError, match="list of requests"):
        router.route_batch("one string")


def test_route_batch_uses_one_encoder_call(router):
    enc = router.encoder
    before = enc.calls
    texts = [f"solve equation number {i}" for i in range(20)] + ["", "symptoms of flu"]
    decisions = router.route_batch(texts)
    assert enc.calls == before + 1
    assert len(decisions) == 22 and all(isinstance(d, RouteDecision) for d in decisions)
    assert decisions[20].reason == "empty_request"


def test_examples_embedded_once(lr_home):
    enc = HashingEncoder(dim=128)
    src = StaticRoutes(ROUTES)
    router = Router(src, encoder=enc, refresh_interval=0)
    n = enc.embedded
    src.set("code", ["write a python function", "fix this javascript bug"])
    assert router.refresh() is True  # the source's revision changed: rebuilt
    assert router.refresh() is False  # unchanged since: nothing to do
    assert router.route("write a python function to sort a list").adapter == "code"
    assert enc.embedded == n + 2 + 1  # two new examples + the request, old examples cached


def test_disk_cache_reused(lr_home, tmp_path):
    HashingEncoder(dim=64, cache_dir=tmp_path).encode(["alpha beta", "gamma"])
    again = HashingEncoder(dim=64, cache_dir=tmp_path)
    again.encode(["alpha beta", "gamma"])
    assert again.embedded == 0


def test_empty_source_routes_everything_to_base(lr_home):
    router = Router.from_examples({}, encoder="hashing")
    d = router.route("anything at all")
    assert d.adapter is None and d.reason == "no_routes"
    assert router.route_batch(["a", "b"])[1].adapter is None
    router.fit(["a", "b"], [None, "legal"])  # nothing to fit against; no crash


def test_route_without_examples_is_listed_not_routable(lr_home):
    router = Router.from_examples({"legal": ROUTES["legal"], "empty": []}, encoder="hashing")
    assert [r.name for r in router.routes] == ["legal"]
    assert [r.name for r in router.unroutable] == ["empty"]
    assert router.route("contract clause").adapter in ("legal", None)


def test_single_route(lr_home):
    router = Router.from_examples({"legal": ROUTES["legal"]}, encoder="hashing")
    assert router.route("is this contract clause enforceable").adapter == "legal"


def test_follows_source_revision(lr_home):
    src = StaticRoutes({"legal": ROUTES["legal"]})
    router = Router(src, encoder="hashing", refresh_interval=0)
    assert router.route("what is the derivative of x squared").adapter != "math"
    src.set("math", ROUTES["math"])
    assert router.route("what is the derivative of x squared").adapter == "math"
    src.remove("math")
    assert router.route("what is the derivative of x squared").adapter != "math"


def _fit_data():
    texts, labels = [], []
    for name, ex in ROUTES.items():
        for e in ex:
            texts.append(e.replace("the ", "a ").replace("is ", "was "))
            labels.append(name)
    oos = [
        "book a flight to paris",
        "what time is it",
        "tell me a joke",
        "play some jazz music",
        "set an alarm for seven",
        "order a pizza",
        "weather tomorrow",
        "call my mother",
    ]
    return texts + oos, labels + [None] * len(oos)


def test_fit_save_load_roundtrip(lr_home, tmp_path):
    router = Router.from_examples(ROUTES, encoder="hashing")
    report = router.fit(*_fit_data())
    assert report["routes"] == 3 and report["out_of_scope"] == 8 and router.fitted
    router.save(tmp_path / "state")
    probe = ["solve the equation 5x equals 10", "book a flight to rome", "symptoms of flu"]
    want = [(d.adapter, round(d.score, 5)) for d in router.route_batch(probe)]
    loaded = Router.load(tmp_path / "state", StaticRoutes(ROUTES), encoder="hashing")
    assert loaded.fitted
    assert [(d.adapter, round(d.score, 5)) for d in loaded.route_batch(probe)] == want
    assert loaded.calibration.threshold == pytest.approx(router.calibration.threshold)


def test_stale_state_detected(lr_home, tmp_path):
    router = Router.from_examples(ROUTES, encoder="hashing")
    router.fit(*_fit_data())
    router.save(tmp_path / "state")
    changed = StaticRoutes({**ROUTES, "code": ["write a python function"]})
    with pytest.raises(RouterStateError, match="fitted on routes"):
        Router.load(tmp_path / "state", changed, encoder="hashing", on_stale="error")
    refit = Router.load(tmp_path / "state", changed, encoder="hashing")
    assert refit.fitted and refit.route_digest == refit._fit_digest
    with pytest.raises(RouterStateError, match="encoder"):
        Router.load(tmp_path / "state", StaticRoutes(ROUTES), encoder="hashing-64")
    with pytest.raises(RouterStateError, match="no router state"):
        Router.load(tmp_path / "nothing", StaticRoutes(ROUTES), encoder="hashing")


def test_fit_validates(lr_home):
    router = Router.from_examples(ROUTES, encoder="hashing")
    with pytest.raises(InvalidRequestError, match="2 texts but 1 labels"):
        router.fit(["a", "b"], ["legal"])
    with pytest.raises(ValueError, match="scoring"):
        Router.from_examples(ROUTES, encoder="hashing", scoring="magic")


@pytest.mark.parametrize("scoring", ["hybrid", "head", "centroid", "knn"])
def test_every_scorer_routes(lr_home, scoring):
    router = Router.from_examples(ROUTES, encoder="hashing", scoring=scoring)
    router.fit(*_fit_data())
    assert router.route("solve the equation 5x equals 10").adapter == "math"


def test_bad_registry_argument(lr_home):
    with pytest.raises(RouterError, match="RouteSource"):
        Router(registry=42, encoder="hashing")


def test_hnsw_index_recall():
    import numpy as np

    from loraroute.router.index import VectorIndex

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = VectorIndex(x, kind="auto", hnsw_threshold=1000)
    assert idx.kind == "hnsw" and idx.recall is not None and idx.recall >= 0.98
    _, ids = idx.search(x[:5], 1)
    assert list(ids[:, 0]) == [0, 1, 2, 3, 4]
    assert VectorIndex(x[:10]).kind == "flat"


def test_request_vectors_are_bounded(lr_home, monkeypatch):
    from loraroute.router.encoders import _cache

    monkeypatch.setattr(_cache, "REQUEST_CACHE_SIZE", 5)
    router = Router.from_examples(ROUTES, encoder=HashingEncoder(dim=64))
    router.route_batch([f"request number {i}" for i in range(20)])
    assert len(router.encoder.cache._recent) == 5
    assert len(router.encoder.cache) == sum(len(v) for v in ROUTES.values())


def test_disk_cache_compacts_and_keeps_every_key(tmp_path, monkeypatch):
    from loraroute.router.encoders import _cache

    monkeypatch.setattr(_cache, "_MAX_SHARDS", 3)
    enc = HashingEncoder(dim=32, cache_dir=tmp_path)
    texts = [f"text {i}" for i in range(300)]  # some digests end in NUL bytes
    for t in texts:
        enc.encode([t])
    again = HashingEncoder(dim=32, cache_dir=tmp_path)
    again.encode(texts)
    assert again.embedded == 0 and len(list(tmp_path.rglob("*.keys.npy"))) <= 4


@pytest.mark.parametrize(
    "module",
    [
        "router",
        "routes",
        "head",
        "index",
        "encoders.hashing",
        "encoders.base",
        "decision",
        "loraroute.messages",
    ],
)
def test_docstring_examples_run(lr_home, module):
    import doctest
    import importlib

    name = module if module.startswith("loraroute.") else f"loraroute.router.{module}"
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
