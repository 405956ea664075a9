"""Routing from a real SQLite registry with tiny adapters and the real MiniLM encoder."""

from __future__ import annotations

import pytest

from loraroute.router import Router, RouteSession

pytestmark = pytest.mark.slow

LEGAL = [
    "Is this non-compete clause enforceable in my employment contract?",
    "What does the indemnification provision in this agreement cover?",
    "Can my landlord terminate the lease early without notice?",
    "Classify whether this contract clause limits liability.",
]
MATH = [
    "Solve for x: 3x + 5 = 20.",
    "A store sells pencils at 3 for $1. How much do 12 pencils cost?",
    "What is the derivative of x^3 + 2x?",
    "If Tom has 5 apples and buys 7 more, how many does he have?",
]
MEDICAL = [
    "Does aspirin reduce the risk of heart attack in elderly patients?",
    "What are the early symptoms of type 2 diabetes?",
    "Is this drug safe to take during pregnancy?",
    "How is high blood pressure usually treated?",
]


@pytest.fixture
def reg(lr_home, tiny_adapter_factory):
    from loraroute.registry import open_registry

    r = open_registry(f"sqlite:///{lr_home.home / 'reg.db'}", settings=lr_home)
    r.push(tiny_adapter_factory(1), "legal", domain="legal", routing_examples=LEGAL)
    r.push(tiny_adapter_factory(2), "math", domain="math", routing_examples=MATH)
    r.push(tiny_adapter_factory(4), "bare", domain="misc")  # no routing examples
    for name in ("legal", "math", "bare"):  # live: the router serves promoted versions only
        r.alias_set(name, "prod", 1)
    return r


def test_routes_from_registry_and_follows_changes(reg, tiny_adapter_factory):
    router = Router(reg, refresh_interval=0)
    assert {r.name for r in router.routes} == {"legal", "math"}
    assert [r.name for r in router.unroutable] == ["bare"]
    d = router.route("How much is 15% of 240?")
    assert (d.adapter, d.ref) == ("math", "math@1") and d.digest == reg.resolve("math@1").digest
    assert router.route("What is the best treatment for a migraine?").adapter != "medical"
    embedded = router.encoder.embedded

    # a pushed adapter is not routed to until promoted, then it is, without a restart; old
    # examples are not re-embedded
    v = reg.push(tiny_adapter_factory(3), "medical", domain="medical", routing_examples=MEDICAL)
    assert router.route("What is the best treatment for a migraine?").adapter != "medical"
    assert "medical" not in {r.name for r in router.routes}
    reg.alias_set("medical", "prod", v.version)
    d = router.route("What is the best treatment for a migraine?")
    assert d.adapter == "medical"
    assert router.encoder.embedded - embedded <= len(MEDICAL) + 1

    # a new version with other examples: live once promoted; the alias pinned back to 1
    reg.push(
        tiny_adapter_factory(5),
        "math",
        domain="math",
        routing_examples=MATH + ["Compute the area of a circle of radius 2."],
    )
    assert router.route("What is 7 times 8?").ref == "math@1"
    reg.alias_set("math", "prod", 2)
    assert router.route("What is 7 times 8?").ref == "math@2"
    reg.alias_set("math", "prod", 1)
    assert router.route("What is 7 times 8?").ref == "math@1"
    reg.alias_remove("medical", "prod")  # demoted: no longer routed to
    assert router.route("What is the best treatment for a migraine?").adapter != "medical"


def test_fit_save_load_with_registry(reg, tmp_path):
    router = Router(reg)
    texts = [
        "Is a verbal agreement legally binding?",
        "Compute 12 squared minus 4.",
        "What's the weather like in Paris tomorrow?",
        "Play some relaxing jazz music",
        "Book a table for two at 8pm",
        "Can I break my rental lease?",
        "What is 45 divided by 9?",
        "Tell me a joke about cats",
    ]
    labels = ["legal", "math", None, None, None, "legal", "math", None]
    router.fit(texts, labels)
    assert router.route("Play some relaxing jazz music").adapter is None
    router.save(tmp_path / "state")
    loaded = Router.load(tmp_path / "state", reg)
    probe = ["Is my landlord allowed to keep the deposit?", "Order me a pizza"]
    assert [d.adapter for d in loaded.route_batch(probe)] == [
        d.adapter for d in router.route_batch(probe)
    ]


def test_conversation_with_minilm(reg):
    router = Router(reg)
    s = RouteSession(router)
    assert s.route("Solve for y: 2y - 4 = 10.").adapter == "math"
    s.add_reply("y = 7")
    assert s.route("Can you explain step two?").adapter == "math"
    d = router.route(
        [
            {"role": "user", "content": "Solve for y: 2y - 4 = 10."},
            {"role": "assistant", "content": "y = 7"},
            {
                "role": "user",
                "content": "Different question: can my employer enforce this non-compete clause?",
            },
        ]
    )
    assert d.adapter == "legal"


def test_truncation_and_odd_input_with_minilm(reg):
    router = Router(reg)
    d = router.route("Solve for x: 3x + 5 = 20. " * 5000)
    assert d.truncated and d.adapter == "math"
    assert not router.route("Solve for x: 3x + 5 = 20.").truncated
    assert router.route("¿Cuál es la derivada de x al cubo? 🤔").reason
    assert router.route("").adapter is None


def test_short_text_fast_path_never_skips_a_needed_cut(reg):
    """Texts short in UTF-8 bytes skip the tokenizer; at the edge of that rule the tokenizer's
    own answer must agree (MiniLM's window is 256 tokens, 254 without [CLS]/[SEP])."""
    enc = Router(reg).encoder
    limit = enc.max_tokens - 2
    tok = enc.model.tokenizer
    for text in ["a" * (limit - 8), "é" * ((limit - 8) // 2), "🤔" * ((limit - 8) // 4)]:
        assert len(text.encode()) + 8 <= limit
        assert enc.truncate(text) == (text, False)
        assert len(tok(text, add_special_tokens=False)["input_ids"]) <= limit
    long = "word " * (limit + 10)  # over the window in tokens, far over the byte rule
    assert enc.truncate(long)[1]
