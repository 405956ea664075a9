"""Our slot LoRA layer gives PEFT's numbers, per adapter and in mixed batches."""

from __future__ import annotations

import json

import pytest
import torch

from loraroute.agents.errors import IncompatibleAdapterError, UnknownAdapterError
from loraroute.agents.lora import read_adapter
from loraroute.agents.runtime.engine import Engine


@pytest.fixture
def engine(tiny_base, lr_home):
    eng = Engine(tiny_base, settings=lr_home, device="cpu", max_resident=4)
    yield eng
    eng.close()


def _peft_logits(tiny_base, adapter_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _base_logits(tiny_base, ids):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    with torch.no_grad():
        return base(input_ids=ids).logits


def test_single_adapter_matches_peft(engine, tiny_base, tiny_adapter):
    engine.load_adapter_folder(tiny_adapter, name="a")
    ids = torch.randint(3, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    ours = engine.logits(ids, ["a", "a"])
    torch.testing.assert_close(ours, _peft_logits(tiny_base, tiny_adapter, ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        engine.logits(ids, [None, None]), _base_logits(tiny_base, ids), atol=1e-5, rtol=0
    )


def test_mixed_batch_matches_per_row_peft(engine, tiny_base, tiny_adapter_factory):
    a = tiny_adapter_factory(1)
    b = tiny_adapter_factory(
        2, r=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    )
    c = tiny_adapter_factory(3, r=2, alpha=16)
    for name, path in (("a", a), ("b", b), ("c", c)):
        engine.load_adapter_folder(path, name=name)
    ids = torch.randint(3, 300, (5, 9), generator=torch.Generator().manual_seed(1))
    rows = ["a", "b", None, "c", "a"]
    ours = engine.logits(ids, rows)
    for i, name in enumerate(rows):
        want = (
            _base_logits(tiny_base, ids[i : i + 1])
            if name is None
            else _peft_logits(tiny_base, {"a": a, "b": b, "c": c}[name], ids[i : i + 1])
        )
        torch.testing.assert_close(ours[i : i + 1], want, atol=1e-5, rtol=0)


def test_rank_growth_keeps_loaded_adapters(engine, tiny_base, tiny_adapter_factory):
    small = tiny_adapter_factory(4, r=4)
    big = tiny_adapter_factory(5, r=32, alpha=16)
    engine.load_adapter_folder(small, name="small")
    engine.load_adapter_folder(big, name="big")
    ids = torch.randint(3, 300, (1, 7), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        engine.logits(ids, ["small"]), _peft_logits(tiny_base, small, ids), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        engine.logits(ids, ["big"]), _peft_logits(tiny_base, big, ids), atol=1e-5, rtol=0
    )


def test_reused_slot_holds_only_the_new_adapter(tiny_base, lr_home, tiny_adapter_factory):
    """A slot written directly from the weights (CPU, no CPU tier) is cleared where the
    previous adapter reached further: a higher rank, or modules the new one does not target."""
    big = tiny_adapter_factory(
        6, r=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    )
    small = tiny_adapter_factory(7, r=2)
    ids = torch.randint(3, 300, (1, 7), generator=torch.Generator().manual_seed(3))
    with Engine(tiny_base, settings=lr_home, device="cpu", max_resident=1) as engine:
        engine.load_adapter_folder(big, name="big")
        engine.load_adapter_folder(small, name="small")  # evicts "big" from the only slot
        assert [e["ref"] for e in engine.resident()] == ["small"]
        torch.testing.assert_close(
            engine.logits(ids, ["small"]), _peft_logits(tiny_base, small, ids), atol=1e-5, rtol=0
        )


def test_mixed_batch_after_a_slot_is_rewritten(tiny_base, lr_home, tiny_adapter_factory):
    """The CPU path keeps the batch's adapters concatenated between forwards; a new adapter
    in one of their slots must be seen by the next mixed forward."""
    a, b, c = (tiny_adapter_factory(s, r=r) for s, r in ((11, 4), (12, 2), (13, 4)))
    ids = torch.randint(3, 300, (3, 6), generator=torch.Generator().manual_seed(4))
    with Engine(tiny_base, settings=lr_home, device="cpu", max_resident=2) as engine:
        engine.load_adapter_folder(a, name="a")
        engine.load_adapter_folder(b, name="b")
        for rows in (["a", "b", None], ["a", "b", None], ["c", "b", None]):
            if "c" in rows:
                engine.load_adapter_folder(c, name="c")  # into a's slot
            mixed = engine.logits(ids, rows)
            for i, name in enumerate(rows):
                alone = engine.logits(ids[i : i + 1], [name])
                torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=0)


def test_folder_digest_is_hashed_from_the_bytes_read(tiny_adapter):
    from loraroute.agents.lora import folder_digest

    assert read_adapter(tiny_adapter).digest == folder_digest(tiny_adapter)
    assert read_adapter(tiny_adapter, digest="sha256:given").digest == "sha256:given"


def test_wrong_base_is_refused_naming_both_fingerprints(engine, other_tiny_base, tmp_path):
    from loraroute.models import fingerprint
    from loraroute.testing import make_tiny_adapter

    folder = make_tiny_adapter(other_tiny_base, tmp_path / "other", seed=3)
    theirs = fingerprint(other_tiny_base)
    with pytest.raises(IncompatibleAdapterError, match=theirs.split(":")[1][:12]) as info:
        engine.load_adapter_folder(folder, name="other")
    assert engine.base_fingerprint in str(info.value)
    assert engine.resident() == []


def test_wrong_shapes_and_modules_are_refused(engine, tiny_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((tiny_adapter / "adapter_config.json").read_text())
    tensors = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0], 64)
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(IncompatibleAdapterError, match=r"\(64, 32\).*another base model"):
        engine.load_adapter_folder(bad, name="bad", base_fingerprint=engine.base_fingerprint)

    tensors = {
        "base_model.model.model.layers.0.mlp.nope.lora_A.weight": torch.zeros(4, 32),
        "base_model.model.model.layers.0.mlp.nope.lora_B.weight": torch.zeros(32, 4),
    }
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(IncompatibleAdapterError, match="nope"):
        engine.load_adapter_folder(bad, name="bad2", base_fingerprint=engine.base_fingerprint)


def test_dora_is_refused(tiny_adapter, tmp_path):
    folder = tmp_path / "dora"
    folder.mkdir()
    cfg = json.loads((tiny_adapter / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    (folder / "adapter_model.safetensors").write_bytes(
        (tiny_adapter / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(IncompatibleAdapterError, match="use_dora"):
        read_adapter(folder)


def test_unknown_adapter_lists_close_names(engine, tiny_adapter):
    engine.load_adapter_folder(tiny_adapter, name="legal")
    with pytest.raises(UnknownAdapterError, match="did you mean 'legal'"):
        engine.generate("hi", adapter="legl", max_new_tokens=2)
