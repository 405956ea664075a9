"""On the real SmolLM2-135M: our mixed-adapter batch equals PEFT row by row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def make_random_adapter(
    base_path: Path, folder: Path, *, seed: int, r: int, targets: list[str]
) -> Path:
    """A PEFT-format LoRA with random A and B for ``targets`` (shapes read from the base)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(base_path))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    shapes = {
        "q_proj": (cfg.hidden_size, cfg.hidden_size),
        "k_proj": (cfg.hidden_size, kv),
        "v_proj": (cfg.hidden_size, kv),
        "o_proj": (cfg.hidden_size, cfg.hidden_size),
        "up_proj": (cfg.hidden_size, cfg.intermediate_size),
        "down_proj": (cfg.intermediate_size, cfg.hidden_size),
    }
    part = {
        "q_proj": "self_attn",
        "k_proj": "self_attn",
        "v_proj": "self_attn",
        "o_proj": "self_attn",
        "up_proj": "mlp",
        "down_proj": "mlp",
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for name in targets:
            fan_in, fan_out = shapes[name]
            key = f"base_model.model.model.layers.{layer}.{part[name]}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) * 0.02
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * 0.02
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": r,
                "lora_alpha": 2 * r,
                "target_modules": targets,
                "bias": "none",
                "base_model_name_or_path": str(base_path),
            }
        )
    )
    return folder


def test_mixed_batch_matches_peft_on_smollm2(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraroute.agents.chat_model import shared_engine

    engine = shared_engine(None, device="cpu")
    a = make_random_adapter(
        engine.base_path, tmp_path / "a", seed=1, r=8, targets=["q_proj", "v_proj"]
    )
    b = make_random_adapter(
        engine.base_path,
        tmp_path / "b",
        seed=2,
        r=16,
        targets=["k_proj", "o_proj", "up_proj", "down_proj"],
    )
    engine.load_adapter_folder(a, name="num-a")
    engine.load_adapter_folder(b, name="num-b")
    ids = torch.randint(10, 40000, (3, 12), generator=torch.Generator().manual_seed(0))
    ours = engine.logits(ids, ["num-a", None, "num-b"])

    base = AutoModelForCausalLM.from_pretrained(str(engine.base_path), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(a), adapter_name="a").eval()
    peft.load_adapter(str(b), adapter_name="b")
    with torch.no_grad():
        want = peft(input_ids=ids, adapter_names=["a", "__base__", "b"]).logits
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    engine.evict("num-a")
    engine.evict("num-b")
