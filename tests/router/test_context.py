"""Conversation routing: scripted conversations, weighting, hysteresis, sessions."""

from __future__ import annotations

import numpy as np
import pytest

from loraroute.router import ContextConfig, HashingEncoder, Router, RouteSession
from loraroute.router.context import TurnScores, route_conversation

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
}


def chat(*turns: str) -> list[dict]:
    out = []
    for i, t in enumerate(turns):
        out.append({"role": "user", "content": t})
        if i < len(turns) - 1:
            out.append({"role": "assistant", "content": "Sure, here is an answer."})
    return out


@pytest.fixture
def router(lr_home):
    return Router.from_examples(ROUTES, encoder=HashingEncoder(dim=512))


def test_follow_up_keeps_previous_route(router):
    d = router.route(chat("solve the equation 2x plus 3 equals 9", "why is that?"))
    assert d.adapter == "math" and d.reason == "follow_up"
    assert router.route("why is that?").adapter is None  # alone it has no signal


def test_clear_topic_change_switches(router):
    d = router.route(
        chat(
            "solve the equation 2x plus 3 equals 9",
            "is the indemnity clause in this contract enforceable",
        )
    )
    assert d.adapter == "legal" and d.reason == "switched"


def test_long_out_of_scope_turn_after_topic_goes_to_base(router):
    d = router.route(
        chat(
            "solve the equation 2x plus 3 equals 9",
            "please recommend a good restaurant for dinner near the station tonight",
        )
    )
    assert d.adapter is None


def test_system_and_langchain_messages(router):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    msgs = [
        SystemMessage("be brief"),
        HumanMessage("what is the derivative of x cubed"),
        AIMessage("3x^2"),
        HumanMessage("ok, why?"),
    ]
    assert router.route(msgs).adapter == "math"


def test_hysteresis_keeps_previous_when_new_route_barely_wins():
    cfg = ContextConfig(margin=0.2)
    thr = np.array([0.5, 0.5])
    scores = np.array([[0.9, 0.1], [0.60, 0.65]])  # turn 2: route 1 wins by 0.05 < margin
    ts = TurnScores(scores, thr, words=[10, 10])
    assert route_conversation(ts, cfg)[0::2] == (0, "kept_previous")
    scores[1] = [0.55, 0.95]  # clear win
    assert route_conversation(TurnScores(scores, thr, [10, 10]), cfg)[0] == 1


def test_context_weighting_rescues_weak_turns():
    cfg = ContextConfig(decay=1.0, followup_words=0)
    thr = np.array([0.5, 0.5])
    scores = np.array([[0.45, 0.1], [0.58, 0.1]])  # turn 1 below, turn 2 alone above
    assert route_conversation(TurnScores(scores, thr, [9, 9]), cfg)[0] == 0
    scores = np.array([[0.7, 0.1], [0.35, 0.1]])  # turn 2 below alone; mean 0.525 clears
    choice, _, reason = route_conversation(TurnScores(scores, thr, [9, 9]), cfg)
    assert (choice, reason) == (0, "follow_up")
    cfg0 = ContextConfig(decay=0.0, followup_words=0)
    assert route_conversation(TurnScores(scores, thr, [9, 9]), cfg0)[0] is None


def test_session_keeps_route_between_calls(router):
    s = RouteSession(router)
    assert s.route("what is the derivative of x squared").adapter == "math"
    s.add_reply("2x")
    assert s.route("and why?").adapter == "math"
    assert s.route("is this contract clause enforceable").adapter == "legal"


def test_config_validation():
    with pytest.raises(ValueError, match="decay"):
        ContextConfig(decay=2.0)
