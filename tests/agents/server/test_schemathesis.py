"""schemathesis against the server's own OpenAPI schema: no generated request gets a 5xx.

Cases are drawn per operation with schemathesis' strategies (schema-conforming and
schema-violating data) and sent to the live server; the check is ``not_a_server_error``.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from loraroute.agents.server import BackgroundServer  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-fuzz"),
        tiny_base,
        {"legal": [tiny_adapter_factory(1)], "math": [tiny_adapter_factory(3)]},
    )
    # short answers keep the fuzzing fast; larger max_tokens are refused with a 400
    with BackgroundServer(s.app(max_tokens_limit=16, request_timeout=20)) as srv:
        yield srv
    s.close()


MODELS = [None, "auto", "base", "legal", "legal:prod", "math@1"]
GENERATION = ("/v1/chat/completions", "/v1/completions")


def _with_model(pair):
    """Most random model names are unknown (404); often use a real one so that fuzzed
    requests reach routing and generation."""
    case, model = pair
    if model is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
    return case


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(served, mode):
    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
    }
    seen: list[tuple[str, int]] = []
    for op in operations:
        strategy = op.as_strategy(generation_mode=mode)
        if op.path in GENERATION:
            strategy = st.tuples(strategy, st.sampled_from(MODELS)).map(_with_model)

        @given(case=strategy)
        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            response = case.call(base_url=served.url, timeout=30)
            label = case.operation.label
            seen.append((label, response.status_code))
            assert response.status_code < 500, (
                f"{label} answered {response.status_code}: {response.text[:500]}\n"
                f"request: {case.as_curl_command()}"
            )

        try:
            check()
        except Unsatisfiable:  # nothing to break in an operation without inputs
            assert mode is GenerationMode.NEGATIVE
            continue
    for path in GENERATION:
        statuses = {status for label, status in seen if label == f"POST {path}"}
        if mode is GenerationMode.POSITIVE:
            assert 200 in statuses, path  # fuzzed requests did reach generation
        assert statuses and max(statuses) < 500
