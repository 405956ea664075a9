"""LangChain's standard unit suite on ChatLoraRoute (tiny base; nothing loads at init)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from langchain_tests.unit_tests import ChatModelUnitTests

from loraroute.agents.chat_model import ChatLoraRoute


@functools.cache
def _tiny_base() -> Path:
    from loraroute.testing import make_tiny_base

    return make_tiny_base(Path(tempfile.mkdtemp(prefix="lr-std-tiny-")))


class TestChatLoraRouteUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatLoraRoute]:
        return ChatLoraRoute

    @property
    def chat_model_params(self) -> dict:
        return {"base_model": str(_tiny_base()), "model": "base", "device": "cpu"}

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
        return "base"
