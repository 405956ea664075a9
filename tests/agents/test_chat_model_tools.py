"""Tool calling and structured output on the real SmolLM2-135M, constrained by xgrammar."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from loraroute.agents.chat_model import ChatLoraRoute, shared_engine

pytestmark = pytest.mark.slow


class Review(BaseModel):
    """The sentiment of a product review."""

    sentiment: Literal["positive", "negative", "neutral"]
    stars: int = Field(ge=1, le=5)


@tool
def get_weather(city: Literal["paris", "london", "tokyo"]) -> str:
    """Get the weather in a city."""
    # Paris' answer is one a model would not guess, so an answer naming it read the tool result
    return {"paris": "snowing", "london": "rainy", "tokyo": "cloudy"}[city]


@pytest.fixture(scope="module")
def llm():
    return ChatLoraRoute(engine=shared_engine(None, device="cpu"), model="base", max_tokens=40)


def test_structured_output_follows_the_schema(llm):
    out = llm.with_structured_output(Review).invoke("Review: 'I love it, works perfectly!'")
    assert isinstance(out, Review)
    assert out.sentiment in ("positive", "negative", "neutral") and 1 <= out.stars <= 5


def test_forced_tool_call_then_answer_from_the_tool_result(llm):
    question = HumanMessage("What is the weather in Paris?")
    call_msg = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    assert len(call_msg.tool_calls) == 1
    call = call_msg.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"]["city"] in ("paris", "london", "tokyo")
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage)
    answer = llm.bind_tools([get_weather]).invoke([question, call_msg, result])
    # SmolLM2 answers (measured) '<tool_response>\nsnowing\n</tool_response>' wrapped twice: no
    # new call, and the weather that only the tool result holds
    assert answer.tool_calls == [] and "snowing" in answer.content
    assert answer.usage_metadata["input_tokens"] > call_msg.usage_metadata["input_tokens"]


def test_streamed_tool_call_aggregates(llm):
    chunks = list(llm.bind_tools([get_weather], tool_choice="any").stream("Weather in Tokyo?"))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.tool_calls and full.tool_calls[0]["name"] == "get_weather"
