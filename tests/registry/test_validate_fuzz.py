"""Property-based fuzzing of the validator: random and mutated configs and safetensors files are
either accepted or refused with InvalidAdapterError, never another exception (no IndexError,
KeyError, struct.error, UnicodeDecodeError, RecursionError...). Bounded to a few seconds."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraroute.registry import InvalidAdapterError
from loraroute.registry.adapter_config import read_adapter_config
from loraroute.registry.testing import tiny_base_shapes, write_lora_folder
from loraroute.registry.validate import validate_folder

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["LORA", "q_proj", "v_proj", ".*", "(a|aa)+$", "none", "all"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
config_keys = st.sampled_from(
    [
        "peft_type",
        "r",
        "lora_alpha",
        "target_modules",
        "rank_pattern",
        "alpha_pattern",
        "use_rslora",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "base_model_name_or_path",
        "use_dora",
        "bias",
        "modules_to_save",
        "fan_in_fan_out",
    ]
)
VALID = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return write_lora_folder(tmp_path_factory.mktemp("fuzz") / "legal")


def check(folder: Path) -> None:
    try:
        validate_folder(folder, base_shapes=tiny_base_shapes())
    except InvalidAdapterError as exc:
        assert "/tmp" not in str(exc)


def with_files(template: Path, **files: bytes):
    """A fresh copy of ``template`` with some files replaced; yields its path."""
    tmp = Path(tempfile.mkdtemp(prefix="lr-fuzz-"))
    folder = tmp / "legal"
    shutil.copytree(template, folder)
    for name, data in files.items():
        (folder / name.replace("__", ".")).write_bytes(data)
    return tmp, folder


def run_on(template: Path, **files: bytes) -> None:
    tmp, folder = with_files(template, **files)
    try:
        check(folder)
    finally:
        shutil.rmtree(tmp)


@FUZZ
@given(changes=st.dictionaries(config_keys, json_values | st.just(...), max_size=5))
def test_mutated_configs(template, changes):
    cfg = dict(VALID)
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with contextlib.suppress(InvalidAdapterError):
        read_adapter_config(cfg)
    data = json.dumps(cfg, allow_nan=True).encode()
    run_on(template, adapter_config__json=data)


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_random_config_bytes(template, data):
    with contextlib.suppress(InvalidAdapterError):
        read_adapter_config(data)


tensor_names = st.sampled_from(
    [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        "base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight",
        "base_model.model.x.lora_A.lora_B.weight",
        "__metadata__",
        "",
    ]
) | st.text(max_size=30)
dims = st.integers(min_value=-2, max_value=40) | st.sampled_from([True, 2.5, "4", None, 2**64])
entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "BOOL", "X"]) | json_values,
        "shape": st.lists(dims, max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(min_value=-1, max_value=600), max_size=3)
        | json_values,
    },
    optional={"extra": json_values},
)


@FUZZ
@given(
    header=st.dictionaries(tensor_names, entries | json_values, max_size=4),
    body=st.binary(max_size=600),
    pad=st.integers(min_value=-3, max_value=3),
)
def test_random_safetensors_headers(template, header, body, pad):
    raw = json.dumps(header).encode()
    size = max(0, len(raw) + pad)
    data = struct.pack("<Q", size) + raw + body
    run_on(template, adapter_model__safetensors=data)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(min_value=0, max_value=10_000),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_safetensors_bytes(template, edits):
    raw = bytearray((template / "adapter_model.safetensors").read_bytes())
    for op, pos, byte in edits:
        pos %= len(raw) or 1
        if op == "flip" and raw:
            raw[pos] ^= byte or 0x80
        elif op == "insert":
            raw[pos:pos] = bytes([byte])
        elif op == "delete" and raw:
            del raw[pos]
        elif op == "truncate":
            del raw[pos:]
    run_on(template, adapter_model__safetensors=bytes(raw))
