"""The knn scorer (the default once fitted) and the labelled fit requests it uses as neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from loraroute.router import HashingEncoder, Router, StaticRoutes
from loraroute.router.index import VectorIndex
from loraroute.router.scoring import DEFAULT_SCORING, KNN_M, KNN_M_CHOICES, knn_scores

ROUTES = {
    "legal": ["is this contract clause enforceable", "what does the indemnity clause cover"],
    "math": ["solve the equation 2x plus 3 equals 7", "what is the derivative of x squared"],
}
#: A phrasing far from every routing example, which only the fit data teaches.
CAKE = "bake a chocolate cake with vanilla frosting"


def _fit_data() -> tuple[list[str], list[str | None]]:
    texts = [
        "is the lease clause enforceable",
        "what does a warranty clause cover",
        "solve x plus 1 equals 2",
        "derivative of x cubed",
        CAKE,
        "bake a lemon cake with vanilla frosting",
        "bake a carrot cake with cream frosting",
        "book a flight to paris",
        "what time is it",
        "tell me a joke",
        "play some jazz music",
        "order a pizza with extra cheese",
    ]
    labels: list[str | None] = ["legal", "legal", "math", "math", "math", "math", "math"]
    return texts, labels + [None] * (len(texts) - len(labels))


def _naive_knn(sims_all: np.ndarray, route_ids: np.ndarray, n_routes: int, m: int) -> np.ndarray:
    """Reference: per route, the mean of its min(m, size) best similarities (exact search)."""
    out = np.empty((len(sims_all), n_routes), np.float32)
    for r in range(n_routes):
        mine = np.sort(sims_all[:, route_ids == r], axis=1)[:, ::-1]
        out[:, r] = mine[:, : min(m, mine.shape[1])].mean(axis=1)
    return out


def test_knn_scores_match_a_naive_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    route_ids = np.array([0] * 20 + [1] * 8 + [2] * 2)  # route 2 has fewer than m examples
    q = x[:5] + 0.1 * rng.normal(size=(5, 16)).astype(np.float32)
    got = knn_scores(VectorIndex(x), route_ids, 3, q, m=3)
    np.testing.assert_allclose(got, _naive_knn(q @ x.T, route_ids, 3, 3), rtol=1e-5, atol=1e-6)


def test_auto_is_hybrid_until_fitted_then_the_best_on_held_out_folds(lr_home, tmp_path):
    # Unfitted, knn's threshold is a guess that sits on the score of clear in-domain questions
    # (see scoring.py); fit() weighs knn (each neighbour count) against the hybrid on held-out
    # folds and keeps the best by the calibration objective.
    assert DEFAULT_SCORING == "auto"
    router = Router(StaticRoutes(ROUTES), encoder="hashing")
    assert (router.scoring, router.scorer, router.knn_m) == ("auto", "hybrid", KNN_M)
    report = router.fit(*_fit_data(), folds=3)
    cands = report["candidates"]
    assert set(cands) == {"hybrid"} | {f"knn m={m}" for m in KNN_M_CHOICES}
    picked = "hybrid" if router.scorer == "hybrid" else f"knn m={router.knn_m}"
    assert report["scorer"] == router.scorer and cands[picked] == max(cands.values())
    # the first candidate wins ties: knn before the hybrid, fewer neighbours first
    first_best = next(c for c, v in cands.items() if v >= max(cands.values()) - 1e-9)
    assert picked == first_best
    router.save(tmp_path / "state")
    loaded = Router.load(tmp_path / "state", StaticRoutes(ROUTES), encoder="hashing")
    assert (loaded.scoring, loaded.scorer, loaded.knn_m) == ("auto", router.scorer, router.knn_m)
    probe = [CAKE, "book a flight to rome", "is the lease clause enforceable"]
    assert [d.adapter for d in loaded.route_batch(probe)] == [
        d.adapter for d in router.route_batch(probe)
    ]


def test_fit_chooses_the_neighbour_count_on_held_out_folds(lr_home, monkeypatch):
    router = Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512), scoring="knn")
    tried: list[int] = []
    real = router._scores

    def spy(st, vecs, head=None, m=None, scorer=None):
        tried.append(m)
        return real(st, vecs, head=head, m=m, scorer=scorer)

    monkeypatch.setattr(router, "_scores", spy)
    router.fit(*_fit_data(), folds=3)
    assert set(tried) == set(KNN_M_CHOICES) and router.knn_m in KNN_M_CHOICES
    # A neighbour count the user gives is kept.
    fixed = Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512), scoring="knn", knn_m=7)
    assert fixed.fit(*_fit_data(), folds=3)["knn_m"] == 7 and fixed.knn_m == 7
    with pytest.raises(ValueError, match="knn_m"):
        Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512), knn_m=0)


def test_fit_requests_become_neighbours(lr_home):
    router = Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512), scoring="knn")
    before = router.route(CAKE)  # far from every example: not math, and CAKE is no neighbour yet
    assert before.adapter != "math" and all(e.text != CAKE for e in before.evidence)
    router.fit(*_fit_data())
    d = router.route(CAKE)
    assert d.adapter == "math" and d.evidence[0].text == CAKE
    # Out-of-scope fit requests are never neighbours: no evidence quotes them.
    d = router.route("order a pizza with extra cheese")
    assert all(e.text != "order a pizza with extra cheese" for e in d.evidence)


def test_thresholds_are_picked_on_held_out_neighbours(lr_home, monkeypatch):
    """Cross-fitting: a fit request never scores against itself while thresholds are picked."""
    router = Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512), scoring="knn")
    texts, labels = _fit_data()
    seen: list[int] = []
    real = router._with_neighbours

    def spy(st, fold_texts, vecs, gold):
        seen.append(len(fold_texts))
        return real(st, fold_texts, vecs, gold)

    monkeypatch.setattr(router, "_with_neighbours", spy)
    router.fit(texts, labels, folds=3)
    # examples-only base, one neighbour set per fold (a strict subset), then all of them.
    assert seen[0] == 0 and all(0 < n < len(texts) for n in seen[1:4]) and seen[4] == len(texts)


@pytest.mark.parametrize("scoring", ["auto", "knn", "hybrid"])
def test_fit_survives_save_load_and_new_revision(lr_home, tmp_path, scoring):
    src = StaticRoutes(ROUTES)
    router = Router(src, encoder="hashing", scoring=scoring, refresh_interval=0)
    router.fit(*_fit_data())
    probe = [CAKE, "book a flight to rome", "is the lease clause enforceable"]
    want = [(d.adapter, round(d.score, 5)) for d in router.route_batch(probe)]
    router.save(tmp_path / "state")
    loaded = Router.load(tmp_path / "state", StaticRoutes(ROUTES), encoder="hashing")
    assert loaded.scoring == scoring
    assert [(d.adapter, round(d.score, 5)) for d in loaded.route_batch(probe)] == want
    src.set("legal", ROUTES["legal"])  # a new revision, the same routes: no re-fit needed
    assert router.refresh(force=True)
    assert [(d.adapter, round(d.score, 5)) for d in router.route_batch(probe)] == want


def test_refit_without_in_scope_data_drops_old_neighbours(lr_home):
    router = Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512), scoring="knn")
    router.fit(*_fit_data())
    assert router.route(CAKE).evidence[0].text == CAKE
    router.fit(["book a flight to paris", "what time is it"], [None, None])
    d = router.route(CAKE)
    assert all(e.text in ROUTES[e.route] for e in d.evidence)
