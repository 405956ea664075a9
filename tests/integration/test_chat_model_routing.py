"""The whole stack on SmolLM2: registry + router + ChatLoraRoute, alias pinning and routing."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

router_mod = pytest.importorskip("loraroute.router")
registry_mod = pytest.importorskip("loraroute.registry")
if not hasattr(router_mod, "Router"):
    pytest.skip("loraroute.router.Router is not available yet", allow_module_level=True)


def _default_home_settings():
    # The default home holds the converted SmolLM2 and its cached fingerprint; only the
    # registry lives in the test's own LORAROUTE_HOME.
    from loraroute.settings import Settings, default_home

    return Settings(home=default_home())


def _random_qv_adapter(base, folder, *, seed: int, r: int = 8):
    """A PEFT-format LoRA on q/v with small random weights, written without loading the model."""
    import json

    import torch
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text())
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads) * (cfg.get("head_dim") or hidden // heads)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, out in (("q_proj", hidden), ("v_proj", kv)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, hidden, generator=gen) * 0.02
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, r, generator=gen) * 0.01
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def stack(lr_home, tmp_path):
    from loraroute.agents.chat_model import ChatLoraRoute
    from loraroute.agents.engine import Engine

    reg = registry_mod.open_registry(settings=lr_home)
    engine = Engine(None, registry=reg, settings=_default_home_settings(), device="cpu")
    base = engine.base_path
    legal = _random_qv_adapter(base, tmp_path / "legal", seed=1)
    maths = _random_qv_adapter(base, tmp_path / "math", seed=2)
    v_legal = reg.push(
        legal,
        "legal",
        domain="law",
        base_fingerprint=engine.base_fingerprint,
        routing_examples=[
            "Is this NDA clause enforceable?",
            "Draft a contract clause",
            "What does the liability clause in my lease mean?",
        ],
    )
    v_math = reg.push(
        maths,
        "math",
        domain="math",
        base_fingerprint=engine.base_fingerprint,
        routing_examples=[
            "Solve for x: 2x + 3 = 7",
            "What is the derivative of x^2?",
            "Compute 17 * 23",
        ],
    )
    reg.alias_set("legal", "prod", 1)
    llm = ChatLoraRoute(engine=engine, registry=reg, router=router_mod.Router(reg), max_tokens=8)
    yield llm, v_legal, v_math
    engine.close()


def test_routes_each_call_and_pins_by_alias(stack):
    llm, v_legal, v_math = stack
    legal = llm.invoke("Is the non-compete clause in my employment contract enforceable?")
    assert legal.response_metadata["adapter_ref"] == v_legal.ref
    assert legal.response_metadata["adapter_digest"] == v_legal.digest
    assert legal.response_metadata["route_confidence"] is not None
    maths = llm.invoke("Solve for y: 3y - 4 = 11")
    assert maths.response_metadata["adapter_ref"] == v_math.ref
    pinned = llm.invoke("Solve for y: 3y - 4 = 11", model="legal:prod")
    assert pinned.response_metadata["adapter_ref"] == v_legal.ref
    assert pinned.response_metadata["model_name"] == "legal:prod"
