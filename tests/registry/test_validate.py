"""The one strict validator: each finding of issue #22 is refused at push with a clear message
that names the field or file (never an absolute path), and nothing is written."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from loraroute.registry import InvalidAdapterError, open_registry
from loraroute.registry.adapter_config import read_adapter_config
from loraroute.registry.testing import (
    tiny_base_shapes,
    write_lora_folder,
    write_safetensors,
)
from loraroute.registry.validate import LoraModule, validate_folder

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture
def reg(tmp_path, lr_home):
    r = open_registry(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    yield r
    r.close()


@pytest.fixture
def folder(tmp_path):
    return write_lora_folder(tmp_path / "legal")


def refused(reg, folder, match: str) -> str:
    """Push ``folder``; it must be refused with ``match``, write nothing, and leak no path."""
    with pytest.raises(InvalidAdapterError, match=match) as info:
        reg.push(folder, "legal")
    assert reg.list() == [] and list(reg.blobs.all_digests()) == []
    message = str(info.value)
    assert str(folder.parent) not in message and "/tmp" not in message
    return message


def set_config(folder, **changes) -> None:
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def poke(folder, tensor: str, index: int, value_bytes: bytes) -> None:
    """Overwrite element ``index`` of ``tensor`` in place (header untouched)."""
    path = folder / "adapter_model.safetensors"
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + n])[tensor]
    start = 8 + n + entry["data_offsets"][0] + index * len(value_bytes)
    raw[start : start + len(value_bytes)] = value_bytes
    path.write_bytes(bytes(raw))


def test_a_valid_folder_reports_modules_and_config(folder):
    info = validate_folder(folder, base_shapes=tiny_base_shapes())
    assert info.rank == 4 and info.alpha == 8.0 and info.dtype == "F32"
    assert info.target_modules == ["q_proj", "v_proj"] and info.base_model_id == "tiny"
    assert info.adapter_config is not None and info.adapter_config.model_extra == {
        "task_type": "CAUSAL_LM",
        "bias": "none",
    }
    assert info.modules["model.layers.1.self_attn.v_proj"] == LoraModule(
        rank=4,
        in_features=32,
        out_features=16,
        scaling=2.0,
        a_key="base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight",
        b_key="base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
    )
    assert sorted(info.files) == ["adapter_config.json", "adapter_model.safetensors"]


def test_peft_adapter_fits_the_real_tiny_base(tiny_adapter, tiny_base):
    # the exact call the runtime makes: base_shapes from the loaded model's nn.Linear layers
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    shapes = {
        n: (m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    info = validate_folder(tiny_adapter, base_shapes=shapes)
    assert set(info.modules) <= set(shapes) and len(info.modules) == 4
    assert {k: v for k, v in shapes.items() if "self_attn" in k} == tiny_base_shapes()


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
@pytest.mark.parametrize("what", ["NaN", "Inf"])
def test_nan_and_inf_weights_refused(reg, tmp_path, dtype, what):
    folder = write_lora_folder(tmp_path / "legal", dtype=dtype)
    bits = {
        ("F32", "NaN"): np.array([np.nan], "<f4").tobytes(),
        ("F32", "Inf"): np.array([np.inf], "<f4").tobytes(),
        ("F16", "NaN"): np.array([np.nan], "<f2").tobytes(),
        ("F16", "Inf"): np.array([-np.inf], "<f2").tobytes(),
        ("F64", "NaN"): np.array([np.nan], "<f8").tobytes(),
        ("F64", "Inf"): np.array([np.inf], "<f8").tobytes(),
        ("BF16", "NaN"): struct.pack("<H", 0x7FC1),
        ("BF16", "Inf"): struct.pack("<H", 0xFF80),
    }[dtype, what]
    poke(folder, f"{Q0}.lora_B.weight", 17, bits)
    msg = refused(reg, folder, f"{Q0}.lora_B.weight' holds {what} \\(element 17")
    assert "retrain" in msg


def test_target_modules_that_do_not_match_the_tensors_refused(reg, folder):
    set_config(folder, target_modules=["q_proj"])  # v_proj weights undeclared
    refused(reg, folder, "module 'model.layers.0.self_attn.v_proj'.*does not declare")
    set_config(folder, target_modules=["q_proj", "v_proj", "o_proj"])  # o_proj has no weights
    refused(reg, folder, "declares target module 'o_proj'.*no weights")
    set_config(folder, target_modules=r".*\.q_proj")  # a regex that misses v_proj
    refused(reg, folder, "v_proj.*does not declare")


def test_peft_matching_rules_accept_regex_suffix_and_layers(folder):
    set_config(folder, target_modules=r".*\.(q|v)_proj")
    assert len(validate_folder(folder).modules) == 4
    set_config(folder, target_modules=["self_attn.q_proj", "v_proj"])
    assert len(validate_folder(folder).modules) == 4
    set_config(folder, target_modules=["q_proj", "v_proj"], layers_to_transform=[0])
    with pytest.raises(InvalidAdapterError, match="layers.1.*does not declare"):
        validate_folder(folder)
    set_config(folder, layers_to_transform=[0, 1], layers_pattern="layers")
    assert len(validate_folder(folder).modules) == 4
    set_config(folder, exclude_modules=["v_proj"])
    with pytest.raises(InvalidAdapterError, match="v_proj.*does not declare"):
        validate_folder(folder)


def test_rank_contradicting_tensors_refused_and_rank_pattern_honoured(reg, folder):
    set_config(folder, r=8)
    refused(reg, folder, "has rank 4 .*contradicts adapter_config.json rank r=8")
    set_config(folder, rank_pattern={"q_proj": 4, "v_proj": 4})
    info = validate_folder(folder)
    assert {m.rank for m in info.modules.values()} == {4}
    set_config(folder, rank_pattern={"q_proj": 4}, alpha_pattern={"v_proj": 2})
    refused(reg, folder, r"v_proj' has rank 4 .*r=8")
    set_config(folder, r=4, use_rslora=True)
    info = validate_folder(folder)
    assert info.modules["model.layers.0.self_attn.q_proj"].scaling == 8 / 2  # alpha / sqrt(r)
    assert info.modules["model.layers.0.self_attn.v_proj"].scaling == 2 / 2


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "r is 0; it must be a positive integer"),
        ("4", "r is '4'; it must be a positive integer"),
        (True, "r is True; it must be a positive integer"),
        (4.0, "r is 4.0; it must be a positive integer"),
        (-2, "r is -2"),
        (..., "r is missing"),
    ],
)
def test_bad_rank_values_refused(reg, folder, value, match):
    set_config(folder, r=value)
    refused(reg, folder, match)


def test_missing_or_other_peft_type_refused(reg, folder):
    set_config(folder, peft_type=...)
    refused(reg, folder, "peft_type is missing")
    set_config(folder, peft_type="LOHA")
    refused(reg, folder, "peft_type is 'LOHA'; loraroute serves only 'LORA'")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("use_dora", True, "use_dora is True.*DoRA"),
        ("bias", "all", "bias is 'all'"),
        ("fan_in_fan_out", True, "fan_in_fan_out is True"),
        ("modules_to_save", ["lm_head"], "modules_to_save is \\['lm_head'\\]"),
        ("lora_alpha", "16", "lora_alpha is '16'; it must be a positive number"),
        ("lora_alpha", 0, "lora_alpha is 0"),
        ("target_modules", [], "target_modules is \\[\\]"),
        ("target_modules", "(unclosed", "not a valid regular expression"),
        ("rank_pattern", {"q_proj": "8"}, "rank_pattern\\['q_proj'\\] is '8'"),
        ("use_rslora", "yes", "use_rslora is 'yes'"),
    ],
)
def test_unsupported_or_mistyped_config_fields_refused(reg, folder, key, value, match):
    set_config(folder, **{key: value})
    refused(reg, folder, match)


def test_config_json_edge_cases_refused(reg, folder):
    cfg = folder / "adapter_config.json"
    text = cfg.read_text()
    cfg.write_text(text[:-1] + ', "r": 4}')
    refused(reg, folder, "key 'r' appears twice")
    cfg.write_text(text.replace('"lora_alpha": 8', '"lora_alpha": NaN'))
    refused(reg, folder, "not valid JSON")
    cfg.write_text("[" * 100_000)
    refused(reg, folder, "adapter_config.json")
    cfg.write_bytes(b"\xff\xfe")
    refused(reg, folder, "not UTF-8")
    cfg.write_text(" " * (2 << 20))
    refused(reg, folder, "larger than")


def test_a_hostile_pattern_is_refused_not_hung(folder):
    set_config(folder, target_modules=r"(\w|\w\w)+\.q_proj$x")
    with pytest.raises(InvalidAdapterError, match="target_modules"):
        validate_folder(folder)


def test_missing_b_and_bad_shapes_refused(reg, folder):
    w = folder / "adapter_model.safetensors"
    a = np.zeros((4, 32), "<f4").tobytes()
    write_safetensors(w, {f"{Q0}.lora_A.weight": ("F32", [4, 32], a)})
    set_config(folder, target_modules=["q_proj"])
    refused(reg, folder, "lora_A but no lora_B for module 'model.layers.0.self_attn.q_proj'")
    b = np.zeros((32, 3), "<f4").tobytes()
    write_safetensors(
        w, {f"{Q0}.lora_A.weight": ("F32", [4, 32], a), f"{Q0}.lora_B.weight": ("F32", [32, 3], b)}
    )
    refused(reg, folder, r"lora_A \[4, 32\] and lora_B \[32, 3\]")


def test_tensor_names_dtypes_and_adapter_names(reg, folder):
    w = folder / "adapter_model.safetensors"
    a = np.zeros((4, 32), "<f4").tobytes()
    b = np.ones((32, 4), "<f4").tobytes()
    set_config(folder, target_modules=["q_proj"])
    write_safetensors(w, {"model.embed_tokens.weight": ("F32", [4, 32], a)})
    refused(reg, folder, "'model.embed_tokens.weight' is not a LoRA weight")
    write_safetensors(
        w, {f"{Q0}.lora_A.weight": ("I32", [4, 32], a), f"{Q0}.lora_B.weight": ("F32", [32, 4], b)}
    )
    refused(reg, folder, "dtype I32; LoRA weights must be one of F16, BF16, F32, F64")
    write_safetensors(  # the named-adapter variant PEFT writes for non-default adapters
        w,
        {
            f"{Q0}.lora_A.legal.weight": ("F32", [4, 32], a),
            f"{Q0}.lora_B.legal.weight": ("F32", [32, 4], b),
        },
    )
    set_config(folder, target_modules=["q_proj"], layers_to_transform=[0])
    assert list(validate_folder(folder).modules) == ["model.layers.0.self_attn.q_proj"]
    write_safetensors(
        w,
        {
            f"{Q0}.lora_A.x.weight": ("F32", [4, 32], a),
            f"{Q0}.lora_B.y.weight": ("F32", [32, 4], b),
        },
    )
    refused(reg, folder, "mixes the weights of several adapters")


def test_symlinked_weights_refused(reg, folder, tmp_path):
    real = tmp_path / "elsewhere.safetensors"
    os.replace(folder / "adapter_model.safetensors", real)
    os.symlink(real, folder / "adapter_model.safetensors")
    msg = refused(reg, folder, "'adapter_model.safetensors' is a symlink")
    assert str(real) not in msg


def test_base_module_missing_refused(folder):
    shapes = tiny_base_shapes()
    del shapes["model.layers.1.self_attn.v_proj"]
    with pytest.raises(
        InvalidAdapterError, match="'model.layers.1.self_attn.v_proj', which is not a linear module"
    ):
        validate_folder(folder, base_shapes=shapes)


def test_base_shape_mismatch_refused(folder):
    shapes = tiny_base_shapes()
    shapes["model.layers.0.self_attn.q_proj"] = (64, 64)
    with pytest.raises(InvalidAdapterError, match=r"\(32, 32\).*q_proj.*\(64, 64\)"):
        validate_folder(folder, base_shapes=shapes)


def test_messages_never_hold_absolute_paths(tmp_path):
    missing = tmp_path / "deep" / "nowhere"
    with pytest.raises(InvalidAdapterError) as info:
        validate_folder(missing)
    assert str(tmp_path) not in str(info.value) and "'nowhere'" in str(info.value)


def test_signature_file_is_reported_not_stored(folder):
    (folder / "model.sig").write_text("{}")
    info = validate_folder(folder)
    assert info.signature == folder / "model.sig" and "model.sig" not in info.files


def test_read_adapter_config_is_the_one_reader():
    cfg = read_adapter_config(
        {"peft_type": "LORA", "r": 8, "target_modules": "q_proj", "custom": [1]}
    )
    assert cfg.lora_alpha == 8.0 and cfg.target_list == ["q_proj"]
    assert cfg.model_extra == {"custom": [1]}
    with pytest.raises(InvalidAdapterError, match="r is None"):
        read_adapter_config(b'{"peft_type": "LORA", "r": null, "target_modules": ["q"]}')
