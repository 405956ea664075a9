"""ChatLoraRoute on a tiny base: routing, pinning, metadata, history rendering, tools, errors."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from loraroute.agents.chat_model import ChatLoraRoute
from loraroute.agents.errors import EmptyConversationError, ToolSchemaError, UnknownAdapterError
from loraroute.agents.runtime.engine import Engine
from loraroute.agents.runtime.prompts import to_chat_dicts


@dataclass
class _Decision:
    ref: str | None
    digest: str | None = None
    score: float = 0.9
    confidence: float = 0.8
    alternatives: list = field(default_factory=lambda: [("other", 0.1)])


class KeywordRouter:
    """Stands in for loraroute.router.Router (same ``route`` interface): 'clause' -> legal."""

    def __init__(self):
        self.seen = []

    def route(self, messages):
        self.seen.append(messages)
        text = " ".join(str(getattr(m, "content", m)) for m in messages)
        return _Decision("legal" if "clause" in text else None)


@pytest.fixture(scope="module")
def engine(tiny_base, tiny_adapter_factory, tmp_path_factory):
    from loraroute.settings import get_settings

    settings = get_settings(home=tmp_path_factory.mktemp("home"))
    # The tiny tokenizer spends ~1 token per character: give the tool prompt room.
    base = tmp_path_factory.mktemp("tiny-base-long")
    shutil.copytree(tiny_base, base, dirs_exist_ok=True)
    cfg = json.loads((base / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (base / "config.json").write_text(json.dumps(cfg))
    eng = Engine(base, settings=settings, device="cpu")
    # the adapters record the original tiny base; its weights are the same as this copy's
    eng.load_adapter_folder(
        tiny_adapter_factory(1), name="legal", base_fingerprint=eng.base_fingerprint
    )
    eng.load_adapter_folder(
        tiny_adapter_factory(2), name="math", base_fingerprint=eng.base_fingerprint
    )
    yield eng
    eng.close()


def test_init_is_lazy():
    llm = ChatLoraRoute(base_model="/does/not/exist", model="legal:prod")
    assert llm.engine is None and llm.model == "legal:prod"


def test_routes_the_whole_conversation_and_reports_it(engine):
    router = KeywordRouter()
    llm = ChatLoraRoute(engine=engine, router=router, max_tokens=6)
    msg = llm.invoke([SystemMessage("be brief"), HumanMessage("Explain this clause")])
    meta = msg.response_metadata
    assert meta["adapter_ref"] == "legal" and meta["model_name"] == "legal"
    assert meta["adapter_digest"].startswith("sha256:")
    assert meta["route_score"] == 0.9 and meta["route_confidence"] == 0.8
    assert meta["alternatives"] == [["other", 0.1]]
    assert len(router.seen[-1]) == 2
    usage = msg.usage_metadata
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert llm.invoke("hello").response_metadata["adapter_ref"] is None  # routed to base


def test_pinning_and_per_call_override(engine):
    llm = ChatLoraRoute(engine=engine, model="math", max_tokens=4)
    assert llm.invoke("hi").response_metadata["adapter_ref"] == "math"
    over = llm.invoke("hi", model="legal").response_metadata
    assert over["adapter_ref"] == "legal" and over["model_name"] == "legal" and not over["routed"]
    assert llm.invoke("hi", model="base").response_metadata["adapter_digest"] is None
    assert llm._get_ls_params(model="legal")["ls_model_name"] == "legal"


def test_stream_batch_and_async(engine):
    llm = ChatLoraRoute(engine=engine, model="legal", max_tokens=6)
    chunks = list(llm.stream("hello"))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert chunks[-1].chunk_position == "last" and full.usage_metadata["output_tokens"] > 0
    assert full.content == llm.invoke("hello").content
    outs = llm.batch(["a", "b", "c"], model="math")
    assert [o.response_metadata["adapter_ref"] for o in outs] == ["math"] * 3

    async def main():
        one = await llm.ainvoke("hello")
        parts = [c async for c in llm.astream("hello")]
        return one, parts

    one, parts = asyncio.run(main())
    assert one.content == full.content
    assert "".join(str(p.content) for p in parts) == full.content


def test_history_with_tools_and_names_is_rendered():
    chat = to_chat_dicts(
        [
            SystemMessage("sys"),
            HumanMessage("add 1 and 2", name="alice"),
            AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
            ToolMessage("3", tool_call_id="c1"),
        ]
    )
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool"]
    assert chat[1]["content"] == "alice: add 1 and 2"
    assert (
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
        in chat[2]["content"]
    )
    assert "3" in chat[3]["content"]


def test_forced_tool_call_is_parsed(engine):
    tool = {
        "type": "function",
        "function": {
            "name": "set_unit",
            "description": "Choose a unit.",
            "parameters": {
                "type": "object",
                "properties": {"unit": {"enum": ["c", "f"]}, "ok": {"type": "boolean"}},
                "required": ["unit", "ok"],
            },
        },
    }
    llm = ChatLoraRoute(engine=engine, model="legal", max_tokens=120).bind_tools(
        [tool], tool_choice="any"
    )
    msg = llm.invoke([HumanMessage("pick"), AIMessage("ok"), ToolMessage("done", tool_call_id="x")])
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] == "set_unit" and call["args"]["unit"] in ("c", "f")
    assert isinstance(call["args"]["ok"], bool)
    assert msg.response_metadata["finish_reason"] == "tool_calls"


def test_bad_tool_schema_fails_at_bind_time(engine):
    bad = {
        "type": "function",
        "function": {
            "name": "f",
            "description": "d",
            "parameters": {"type": "object", "properties": {"x": {"type": "frobnicate"}}},
        },
    }
    with pytest.raises(ToolSchemaError, match="frobnicate"):
        ChatLoraRoute(engine=engine).bind_tools([bad])
    with pytest.raises(ToolSchemaError, match="not among the bound tools"):
        ChatLoraRoute(engine=engine).bind_tools([bad], tool_choice="g")


def test_bad_input(engine):
    llm = ChatLoraRoute(engine=engine, model="base", max_tokens=4)
    with pytest.raises(EmptyConversationError):
        llm.invoke([])
    with pytest.raises(UnknownAdapterError, match="legal"):
        llm.invoke("hi", model="legl")
