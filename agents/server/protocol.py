"""Wire types of the OpenAI-compatible server: requests, responses, errors.

Requests follow OpenAI's chat and completions APIs plus vLLM's extra parameters, so that
unmodified clients work. Every parameter a request may carry is declared here; anything else
is refused with a 400 naming it (a parameter must never be silently ignored), and a declared
parameter whose value we cannot honour is refused the same way (see :mod:`.params`). Explicit
``null`` stands for "not given". Responses are OpenAI's own types from the ``openai`` package,
with our ``loraroute`` field (which adapter answered, and why) added.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from openai.types import Completion as _Completion
from openai.types.chat import ChatCompletion as _ChatCompletion
from pydantic import BaseModel, ConfigDict, Field, model_validator

TokenId = Annotated[int, Field(ge=0)]

# -- requests ------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """One block of a message's content; only ``{"type": "text", "text": ...}`` is served."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    # a message copied from an earlier answer carries fields (refusal, annotations, ...) that
    # say nothing about this request
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionDef


class _Strict(BaseModel):
    """Refuses unknown fields; an explicit ``null`` counts as not given."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in cls.model_fields}
        return data


class StreamOptions(_Strict):
    include_usage: bool | None = False
    include_obfuscation: bool | None = Field(
        default=None, description="Only false: this server adds no obfuscation field."
    )


class StructuredOutputs(_Strict):
    """vLLM's ``structured_outputs``: one of ``json``, ``regex``, ``choice``, ``grammar``,
    ``json_object``."""

    json_schema: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class GenerationRequest(_Strict):
    """What chat and completion requests share: the OpenAI sampling parameters and vLLM's
    extra ones."""

    model: str = Field(
        min_length=1,
        max_length=256,
        description='"auto" routes by content; "base" is the bare base model; any other value '
        "names an adapter (legal, legal:prod, legal@3).",
    )
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    n: int | None = Field(default=None, ge=1, le=128, description="Choices, sampled in one batch.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    user: str | None = Field(default=None, max_length=256, description="Logged with the request.")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, description="Token id (as a string) -> bias added to its logit."
    )
    response_format: dict[str, Any] | None = None
    # vLLM's extra sampling parameters
    top_k: int | None = Field(default=None, ge=-1, description="-1 or 0: off")
    min_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=256)
    include_stop_str_in_output: bool | None = False
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(default=None, ge=0)
    skip_special_tokens: bool | None = Field(default=True, description="Only true.")
    spaces_between_special_tokens: bool | None = Field(default=True, description="Only true.")
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)
    allowed_token_ids: list[TokenId] | None = Field(default=None, min_length=1)
    return_tokens_as_token_ids: bool | None = False
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = Field(default=None, max_length=65536)
    guided_choice: list[str] | None = Field(default=None, min_length=1, max_length=1024)
    guided_grammar: str | None = Field(default=None, max_length=262144)
    guided_decoding_backend: str | None = Field(default=None, description="xgrammar or auto")
    structured_outputs: StructuredOutputs | None = None
    request_id: str | None = Field(default=None, description="This request's id in logs.")
    priority: int | None = Field(default=0, description="Only 0: no priority scheduling.")


class ChatCompletionRequest(GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDef] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = Field(default=None, description='Only ["text"].')
    store: bool | None = Field(default=None, description="Only false: nothing is stored.")
    service_tier: str | None = Field(default=None, description="Only auto or default.")
    safety_identifier: str | None = Field(default=None, max_length=256)


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``: one prompt or several, as text or token ids."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        description="A text, texts, token ids, or lists of token ids"
    )
    max_tokens: int | None = Field(default=None, ge=0, description="Default 16; 0 with echo")
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1, description="Only equal to n (no reranking).")
    add_special_tokens: bool | None = True


class LoadAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter`` body."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1, max_length=256)
    lora_path: str = Field(min_length=1, max_length=4096)
    load_inplace: bool = False


class UnloadAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter`` body."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1, max_length=256)
    lora_int_id: int | None = None


# -- responses -----------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


class RouteInfo(BaseModel):
    """Which adapter answered and why; also sent as ``X-LoraRoute-*`` headers."""

    requested_model: str
    adapter: str | None = Field(description="The adapter version that answered; null = base.")
    adapter_digest: str | None = None
    routed: bool = False
    route_reason: str | None = None
    route_score: float | None = None
    route_confidence: float | None = None
    alternatives: list[list[Any]] = Field(default_factory=list)
    base_model: str | None = None
    placement: dict[str, Any] | None = Field(
        None,
        description="Where it ran, on a backend with several engines (Ray: replica, "
        "adapter_was_resident, attempts); absent otherwise.",
    )


class ChatCompletion(_ChatCompletion):
    """OpenAI's chat completion, with which adapter answered."""

    loraroute: RouteInfo


class Completion(_Completion):
    """OpenAI's text completion, with which adapter answered."""

    loraroute: RouteInfo


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loraroute"
    root: str | None = None
    parent: str | None = None
    loraroute: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


#: Error responses every generation endpoint may give, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed or unsupported request"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "Unknown model or adapter"},
    409: {"model": ErrorResponse, "description": "Adapter busy or loaded with other content"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "Queue full; retry after Retry-After seconds"},
    502: {"model": ErrorResponse, "description": "The external engine failed (proxy backend)"},
    503: {"model": ErrorResponse, "description": "Not ready, or every adapter slot busy"},
    504: {"model": ErrorResponse, "description": "Generation exceeded the request timeout"},
}
