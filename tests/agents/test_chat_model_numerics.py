"""On the real SmolLM2-135M: our mixed-adapter batch equals PEFT row by row."""

from __future__ import annotations

import pytest
import torch

from loraroute.testing import make_random_lora

pytestmark = pytest.mark.slow


def test_mixed_batch_matches_peft_on_smollm2(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraroute.agents.chat_model import shared_engine

    engine = shared_engine(None, device="cpu")
    a = make_random_lora(
        engine.base_path, tmp_path / "a", seed=1, r=8, targets=["q_proj", "v_proj"], b_scale=0.02
    )
    b = make_random_lora(
        engine.base_path,
        tmp_path / "b",
        seed=2,
        r=16,
        targets=["k_proj", "o_proj", "up_proj", "down_proj"],
        b_scale=0.02,
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
