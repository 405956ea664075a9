"""Merge numerics on the tiny base: the merged model's weights against a delta computed by hand.

A LoRA adapter changes a target weight ``W`` (``[out, in]``) into ``W + s * B @ A`` with
``s = lora_alpha / r``. Merging adapters 1 and 2 with weights ``w1, w2`` should give
``W + w1 * s1 * B1 @ A1 + w2 * s2 * B2 @ A2``; these tests rebuild that sum from the adapter
files and compare it with the base weights after peft folds the merged adapter in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraroute.agents.errors import IncompatibleAdapterError
from loraroute.agents.training.merge import merge_adapters
from loraroute.testing import make_tiny_adapter

TARGETS = [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]


def _lora(folder: Path) -> tuple[dict[str, torch.Tensor], float, int]:
    """(tensors, scale alpha/r, rank) of an adapter folder, read straight from its files."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    return (
        load_file(str(folder / "adapter_model.safetensors")),
        cfg["lora_alpha"] / cfg["r"],
        cfg["r"],
    )


def _delta(folder: Path, module: str) -> torch.Tensor:
    """``s * B @ A`` of one target module, by hand."""
    tensors, scale, _ = _lora(folder)
    key = f"base_model.model.{module}"
    return scale * tensors[f"{key}.lora_B.weight"] @ tensors[f"{key}.lora_A.weight"]


def _folded_weights(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """Each target's weight after peft merges ``adapter`` into the base (merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    folded = model.merge_and_unload()
    return {m: folded.get_submodule(m).weight.detach().clone() for m in TARGETS}


def _base_weights(base: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    return {m: model.get_submodule(m).weight.detach().clone() for m in TARGETS}


@pytest.fixture(scope="module")
def pair(tiny_adapter_factory):
    """Two independent adapters of equal rank and targets (the case "auto" once made linear)."""
    return tiny_adapter_factory(11, r=4, alpha=8), tiny_adapter_factory(12, r=4, alpha=16)


def test_a_single_adapter_folds_in_as_base_plus_scale_b_a(tiny_base, pair):
    """The reference itself: peft folding one adapter gives W + (alpha/r) * B @ A."""
    base = _base_weights(tiny_base)
    folded = _folded_weights(tiny_base, pair[0])
    for m in TARGETS:
        torch.testing.assert_close(folded[m], base[m] + _delta(pair[0], m), rtol=1e-5, atol=1e-6)
        assert _delta(pair[0], m).abs().max() > 1e-2  # the adapter really changes the weight


@pytest.mark.parametrize("combination", ["auto", "cat"])
def test_merge_is_the_weighted_sum_of_the_deltas(tiny_base, pair, tmp_path, combination):
    """The default and ``cat`` are exact: W + w1*s1*B1@A1 + w2*s2*B2@A2, ranks add up."""
    w1, w2 = 0.7, 0.3
    out = merge_adapters(
        tiny_base, *pair, tmp_path / "m", weights=(w1, w2), combination=combination
    )
    _, _, rank = _lora(out)
    assert rank == 8
    base, folded = _base_weights(tiny_base), _folded_weights(tiny_base, out)
    for m in TARGETS:
        want = base[m] + w1 * _delta(pair[0], m) + w2 * _delta(pair[1], m)
        torch.testing.assert_close(folded[m], want, rtol=1e-5, atol=1e-5)


def test_cat_of_different_ranks_and_targets_is_exact(tiny_base, tiny_adapter_factory, tmp_path):
    """Adapters of other ranks and targets: each module gets the deltas of those that touch it."""
    first = tiny_adapter_factory(21, r=2, alpha=4, target_modules=("q_proj",))
    second = tiny_adapter_factory(22, r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    out = merge_adapters(tiny_base, first, second, tmp_path / "m", weights=(1.0, -0.5))
    assert _lora(out)[2] == 6
    base, folded = _base_weights(tiny_base), _folded_weights(tiny_base, out)
    for m in TARGETS:
        want = base[m] - 0.5 * _delta(second, m)
        if m.endswith("q_proj"):
            want = want + _delta(first, m)
        torch.testing.assert_close(folded[m], want, rtol=1e-5, atol=1e-5)


def test_linear_is_peft_s_product_of_weighted_sums(tiny_base, pair, tmp_path):
    """``linear`` (on request only) keeps the rank by summing sqrt(w*s)-weighted A's and B's, so
    the delta carries cross terms B_i @ A_j: it is the product below, not the weighted sum."""
    w = (0.5, 0.5)
    out = merge_adapters(tiny_base, *pair, tmp_path / "m", weights=w, combination="linear")
    tensors, scale, rank = _lora(out)
    assert rank == 4 and scale == 1.0
    base, folded = _base_weights(tiny_base), _folded_weights(tiny_base, out)
    for m in TARGETS:
        a_sum, b_sum, exact = 0, 0, base[m].clone()
        for wi, folder in zip(w, pair, strict=True):
            t, s, _ = _lora(folder)
            key = f"base_model.model.{m}"
            a_sum = a_sum + (wi * s) ** 0.5 * t[f"{key}.lora_A.weight"]
            b_sum = b_sum + (wi * s) ** 0.5 * t[f"{key}.lora_B.weight"]
            exact += wi * _delta(folder, m)
        torch.testing.assert_close(folded[m], base[m] + b_sum @ a_sum, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(folded[m], exact, atol=1e-3)  # the cross terms are there


def test_linear_refuses_unequal_ranks(tiny_base, tiny_adapter_factory, tmp_path):
    first, second = tiny_adapter_factory(31, r=2, alpha=4), tiny_adapter_factory(32, r=4)
    with pytest.raises(IncompatibleAdapterError, match="equal ranks"):
        merge_adapters(tiny_base, first, second, tmp_path / "m", combination="linear")
    assert not (tmp_path / "m").exists()


def test_merge_refuses_an_adapter_of_another_base(tiny_base, other_tiny_base, pair, tmp_path):
    """Same shapes, other weights: an adapter trained on one tiny base is refused on the other,
    whether the base given is wrong for both adapters or for one of them."""
    foreign = make_tiny_adapter(other_tiny_base, tmp_path / "foreign", seed=41)
    with pytest.raises(IncompatibleAdapterError, match="base") as exc:
        merge_adapters(other_tiny_base, *pair, tmp_path / "m1")
    assert str(pair[0]) in str(exc.value)
    with pytest.raises(IncompatibleAdapterError, match="base") as exc:
        merge_adapters(tiny_base, pair[0], foreign, tmp_path / "m2")
    assert str(foreign) in str(exc.value)
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
    # its own base takes it
    merge_adapters(other_tiny_base, foreign, foreign, tmp_path / "m3")


def test_registry_merge_refuses_across_bases(tiny_base, other_tiny_base, pair, tmp_path, lr_home):
    """Through the registry: two adapters recorded on different bases, and an adapter whose
    recorded fingerprint is not that of the base its base_model_id resolves to."""
    from loraroute.agents.training.merge import merge_from_registry
    from loraroute.models import fingerprint
    from loraroute.registry import open_registry

    reg = open_registry(f"sqlite:///{tmp_path / 'reg.db'}", settings=lr_home)
    ours, theirs = fingerprint(tiny_base), fingerprint(other_tiny_base)
    foreign = make_tiny_adapter(other_tiny_base, tmp_path / "foreign", seed=41)
    reg.push(pair[0], "ours", base_model_id=str(tiny_base), base_fingerprint=ours)
    reg.push(foreign, "theirs", base_model_id=str(other_tiny_base), base_fingerprint=theirs)
    with pytest.raises(IncompatibleAdapterError, match="different bases"):
        merge_from_registry("ours@1", "theirs@1", "both", registry=reg, settings=lr_home)
    # both say the other base's fingerprint, but name this base: the loaded base disagrees
    reg.push(foreign, "mislabelled", base_model_id=str(tiny_base), base_fingerprint=theirs)
    with pytest.raises(IncompatibleAdapterError, match="trained on base"):
        merge_from_registry("mislabelled@1", "theirs@1", "m", registry=reg, settings=lr_home)
    assert [v.name for v in reg.list()] == ["mislabelled", "ours", "theirs"]
    merged = merge_from_registry("ours@1", "ours@1", "twice", registry=reg, settings=lr_home)
    assert merged.base_fingerprint == ours and merged.rank == 8
    reg.close()
