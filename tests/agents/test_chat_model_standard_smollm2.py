"""LangChain's standard integration suite on ChatLoraRoute with the real SmolLM2-135M.

The model is pinned to the base (``model="base"``) so the suite does not depend on the router;
the per-call override test switches to a random rank-8 adapter loaded into the same engine.
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
# A Hermes-format call of the standard tools takes 29 tokens + EOS (+ room for whitespace).
MAX_TOKENS = 40


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

    # -- honest xfails: limits of a 135M-parameter model, not of the runtime -------------------
    _LOOPS = (
        "SmolLM2-135M repeats itself inside free-text JSON string values under greedy decoding "
        "until max_tokens (40 here); the runtime reports the cut-off call in invalid_tool_calls"
    )
    _AUTO = (
        "with tool_choice='auto' SmolLM2-135M answers in prose instead of deciding to call the "
        "tool; forced calls (tool_choice='any' or a name) pass in test_tool_calling/test_tool_choice"
    )

    @pytest.mark.xfail(reason=_LOOPS)
    def test_unicode_tool_call_integration(self, model):
        super().test_unicode_tool_call_integration(model)

    # The structured-output variants ask for free-text jokes and all hit the same limit; they
    # are not run, to keep the suite short. test_chat_model_tools.py shows structured output
    # working on SmolLM2 with a schema of enums and integers.
    @pytest.mark.xfail(reason=_LOOPS, run=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model, schema_type):
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_LOOPS, run=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model, schema_type):
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_LOOPS, run=False)
    def test_structured_output_pydantic_2_v1(self, model):
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=_LOOPS, run=False)
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
