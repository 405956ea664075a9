"""LangChain's standard integration suite on ChatLoraRoute with the real SmolLM2-135M.

The model is pinned to the base (``model="base"``) so the suite does not depend on the router;
the per-call override test switches to a random rank-8 adapter loaded into the same engine.
The file takes about 6.5 minutes on 2 shared CPU cores (32 passed, 8 skipped by the suite for
inputs the model lacks, 10 xfailed); the xfails, which run until the token limit, take 4 of them.
"""

from __future__ import annotations

import functools
import inspect
import tempfile
from pathlib import Path

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from loraroute.agents.chat_model import ChatLoraRoute, shared_engine
from loraroute.testing import make_random_lora

pytestmark = pytest.mark.slow

OVERRIDE = "smol-random"
# The longest correct answer the suite draws from SmolLM2 is test_unicode_tool_call_integration's
# Chinese customer call: 91 tokens (a 40-token cap cut it off and blamed the model); 128 leaves
# room. Measured per call with a 256-token cap; the xfails below loop at 256 too.
MAX_TOKENS = 128


@functools.cache
def _engine():
    engine = shared_engine(None, device="cpu")
    folder = make_random_lora(engine.base_path, Path(tempfile.mkdtemp(prefix="lr-smol-adapter-")))
    engine.load_adapter_folder(folder, name=OVERRIDE, base_fingerprint=engine.base_fingerprint)
    return engine


class TestChatLoraRouteIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLoraRoute]:
        return ChatLoraRoute

    @property
    def chat_model_params(self) -> dict:
        return {"engine": _engine(), "model": "base", "max_tokens": MAX_TOKENS}

    @property
    def standard_chat_model_params(self) -> dict:
        params = dict(super().standard_chat_model_params)
        params["max_tokens"] = MAX_TOKENS
        return params

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return OVERRIDE

    # -- xfails (strict, see pyproject): limits of a 135M-parameter model, each failure shown
    # by running it; the measured answers are quoted. README lists them.
    _LOOPS = (
        "SmolLM2-135M under greedy decoding repeats itself inside the free-text joke fields "
        "(setup 'A cat is a cat, a cat is a cat, ...', punchline 'the cat was a cat, and the cat "
        "was a cat, ...') until max_tokens, also with 256 tokens, so the structured call never "
        "closes and parses to None"
    )
    _AUTO = (
        "with tool_choice='auto' SmolLM2-135M answers the weather question in prose ('The "
        "weather in San Francisco, CA, is typically described as ...', 256 tokens without a "
        "call) instead of calling the tool; forced calls pass in test_tool_calling/test_tool_choice"
    )

    @pytest.mark.xfail(reason=_LOOPS)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model, schema_type):
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_LOOPS)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model, schema_type):
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_LOOPS)
    def test_structured_output_pydantic_2_v1(self, model):
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(
        reason="the first call (a schema whose punchline is optional) fits in 47 tokens and "
        "parses; the second repeats 'The cat was a cat, and it was a cat, ...' in the setup "
        "until max_tokens, also with 256 tokens"
    )
    def test_structured_output_optional_param(self, model):
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason=_AUTO)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model):
        super().test_agent_loop(model)


def _mark_async_tests(cls: type) -> None:
    """pytest-asyncio runs in strict mode here, so the inherited async tests need its mark.

    The standard suite forbids overriding its tests (except xfails), so the mark goes on the
    inherited functions themselves; it only tells pytest-asyncio to run them.
    """
    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(fn):
            marks = getattr(fn, "pytestmark", [])
            if not any(m.name == "asyncio" for m in marks):
                pytest.mark.asyncio(fn)


_mark_async_tests(TestChatLoraRouteIntegration)
