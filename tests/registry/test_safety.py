"""Safety checks at push: every refusal is clear and writes nothing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct

import pytest

from loraroute.registry import InvalidAdapterError, InvalidReferenceError, open_registry


@pytest.fixture
def reg(tmp_path, lr_home):
    r = open_registry(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    yield r
    r.close()


@pytest.fixture
def adapter(tiny_adapter, tmp_path):
    dest = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, dest)
    return dest


def assert_nothing_written(reg):
    assert reg.list() == [] and reg.revision() == "0"
    assert list(reg.blobs.all_digests()) == []


def test_pickle_bin_refused_with_conversion_hint(reg, adapter):
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(
        InvalidAdapterError, match="adapter_model.bin.*pickle.*save_file.*safe_serialization=True"
    ):
        reg.push(adapter, "legal")
    assert_nothing_written(reg)


def test_truncated_safetensors_refused(reg, adapter):
    w = adapter / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(InvalidAdapterError, match="truncated"):
        reg.push(adapter, "legal")
    assert_nothing_written(reg)


@pytest.mark.parametrize(
    "payload", [b"abc", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope"]
)
def test_malformed_safetensors_refused(reg, adapter, payload):
    (adapter / "adapter_model.safetensors").write_bytes(payload)
    with pytest.raises(InvalidAdapterError, match="adapter_model.safetensors"):
        reg.push(adapter, "legal")
    assert_nothing_written(reg)


def test_missing_or_invalid_config_refused(reg, adapter):
    cfg = adapter / "adapter_config.json"
    text = cfg.read_text()
    cfg.unlink()
    with pytest.raises(InvalidAdapterError, match="no adapter_config.json"):
        reg.push(adapter, "legal")
    cfg.write_text("{not json")
    with pytest.raises(InvalidAdapterError, match="not valid JSON"):
        reg.push(adapter, "legal")
    data = json.loads(text)
    del data["peft_type"]
    cfg.write_text(json.dumps(data))
    with pytest.raises(InvalidAdapterError, match="peft_type"):
        reg.push(adapter, "legal")
    assert_nothing_written(reg)


def test_shapes_contradicting_rank_refused(reg, adapter):
    cfg = adapter / "adapter_config.json"
    data = json.loads(cfg.read_text())
    data["r"] = 8
    cfg.write_text(json.dumps(data))
    with pytest.raises(InvalidAdapterError, match="contradicts adapter_config.json rank r=8"):
        reg.push(adapter, "legal")
    assert_nothing_written(reg)


@pytest.mark.parametrize("name", ["a/b", "..", "x\0y", "n" * 129, "", "-x"])
def test_bad_adapter_names_refused(reg, adapter, name):
    with pytest.raises(InvalidReferenceError, match="not allowed"):
        reg.push(adapter, name)
    assert_nothing_written(reg)


def test_overlong_file_path_refused(reg, adapter):
    deep = adapter.joinpath(*["d" * 250] * 5)
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("x")
    with pytest.raises(InvalidAdapterError, match="the limit is 1024"):
        reg.push(adapter, "legal")
    assert_nothing_written(reg)


@pytest.mark.parametrize("rel", ["f" * 300, "../x", "a/../b", "/etc/passwd", "a\0b"])
def test_unsafe_manifest_paths_refused(rel):
    # paths from a remote manifest never touch the disk before this check
    from loraroute.registry.validate import check_file_name

    with pytest.raises(InvalidAdapterError, match="not allowed|limit is 255|'..'"):
        check_file_name(rel)


def test_symlinks_refused(reg, adapter, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", adapter / "notes.txt")
    with pytest.raises(InvalidAdapterError, match="symlink"):
        reg.push(adapter, "legal")
    (adapter / "notes.txt").unlink()
    os.symlink(tmp_path, adapter / "sub")
    with pytest.raises(InvalidAdapterError, match="symlink"):
        reg.push(adapter, "legal")
    assert_nothing_written(reg)


def test_require_base_mismatch_refused(reg, adapter):
    fp = reg.push(adapter, "legal").base_fingerprint
    assert reg.push(adapter, "legal", require_base=fp).version == 1
    with pytest.raises(InvalidAdapterError, match="sha256:" + "1" * 64):
        reg.push(adapter, "other", require_base="sha256:" + "1" * 64)


def test_unknown_base_records_none_with_warning(reg, adapter, caplog):
    cfg = adapter / "adapter_config.json"
    data = json.loads(cfg.read_text())
    data["base_model_name_or_path"] = str(adapter / "no-such-base")
    cfg.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="loraroute.registry"):
        v = reg.push(adapter, "legal")
    assert v.base_fingerprint is None and "base_fingerprint left empty" in caplog.text
