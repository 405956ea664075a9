"""Core registry behaviour against SQLite (a real file) and PostgreSQL (a fresh database)."""

from __future__ import annotations

import json

import pytest

from loraroute.registry import (
    AdapterNotFoundError,
    IntegrityError,
    InvalidReferenceError,
    Registry,
    VersionConflictError,
    open_registry,
    parse_ref,
)


def test_parse_ref_forms():
    assert parse_ref("legal") == ("legal", None, None, None)
    assert parse_ref("legal@3").version == 3
    assert parse_ref("legal:prod").alias == "prod"
    d = "sha256:" + "a" * 64
    assert parse_ref(f"legal@{d}").digest == d


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "legal@",
        "legal@0",
        "legal@x",
        "a/b",
        "..",
        "le..gal",
        "legal:",
        ":prod",
        "legal@sha256:abc",
        "x\0y",
        "a" * 200,
        "legal@3:prod",
    ],
)
def test_parse_ref_rejects(bad):
    with pytest.raises(InvalidReferenceError, match="invalid adapter reference"):
        parse_ref(bad)


def test_push_resolve_metadata(reg, tiny_adapter):
    v = reg.push(
        tiny_adapter,
        "legal",
        domain="law",
        description="contracts",
        routing_examples=["draft an NDA"],
        tags={"team": "a"},
        metrics={"loss": 1.5},
        author="me",
        license="mit",
        training_config={"lr": 1e-3},
        data_digest="sha256:x",
    )
    assert (v.name, v.version, v.ref) == ("legal", 1, "legal@1")
    assert v.digest.startswith("sha256:") and len(v.digest) == 71
    assert v.peft_type == "LORA" and v.rank == 4 and v.alpha == 8.0
    assert v.target_modules == ["q_proj", "v_proj"] and v.dtype == "F32"
    assert v.base_fingerprint and v.base_fingerprint.startswith("sha256:")
    assert {f.path for f in v.files} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert v.size == sum(f.size for f in v.files)
    for ref in ("legal", "legal@1", "legal:latest", f"legal@{v.digest}"):
        assert reg.resolve(ref) == v
    assert v.tags == {"team": "a"} and v.metrics == {"loss": 1.5}
    assert v.training_config == {"lr": 1e-3} and v.routing_examples == ["draft an NDA"]


def test_identical_push_is_noop_and_versions_are_immutable(reg, tiny_adapter_factory):
    a, b = tiny_adapter_factory(1), tiny_adapter_factory(2)
    v1 = reg.push(a, "legal")
    rev = reg.revision()
    assert reg.push(a, "legal") == v1
    assert reg.revision() == rev
    v2 = reg.push(b, "legal", parent="legal@1")
    assert v2.version == 2 and v2.parent == "legal@1"
    # identical files are stored once across versions and adapters
    reg.push(a, "other")
    shared = {f.digest for f in v1.files} & {f.digest for f in v2.files}
    assert shared  # README / config identical between seeds
    assert len(list(reg.blobs.all_digests())) == len({f.digest for f in v1.files + v2.files})
    with pytest.raises(VersionConflictError, match="legal@1 exists with different content"):
        reg.push(tiny_adapter_factory(3), "legal", version=1)
    assert reg.push(a, "legal", version=1) == v1


def test_not_found_errors(reg, tiny_adapter):
    reg.push(tiny_adapter, "legal")
    with pytest.raises(AdapterNotFoundError, match="'nope'"):
        reg.resolve("nope")
    with pytest.raises(AdapterNotFoundError, match="legal@7"):
        reg.resolve("legal@7")
    with pytest.raises(AdapterNotFoundError, match="legal:prod"):
        reg.resolve("legal:prod")


def test_aliases_list_serving(reg, tiny_adapter_factory):
    reg.push(tiny_adapter_factory(1), "legal", domain="law", tags={"stage": "rc"})
    reg.push(tiny_adapter_factory(2), "legal", domain="law")
    reg.push(tiny_adapter_factory(3), "med", domain="health", tags={"stage": "ga"})
    r0 = reg.revision()
    assert reg.alias_set("legal", "prod", 1).aliases == ["prod"]
    assert reg.revision() != r0
    assert reg.resolve("legal:prod").version == 1
    assert [(v.ref, v.aliases) for v in reg.list(name="legal")] == [
        ("legal@1", ["prod"]),
        ("legal@2", []),
    ]
    assert [v.ref for v in reg.list(domain="health")] == ["med@1"]
    assert [v.ref for v in reg.list(tag="stage")] == ["legal@1", "med@1"]
    assert [v.ref for v in reg.list(tag="stage=ga")] == ["med@1"]
    fp = reg.resolve("med").base_fingerprint
    assert len(reg.list(base=fp)) == 3
    assert [v.ref for v in reg.serving("prod")] == ["legal@1"]  # med holds no prod: not live
    reg.alias_set("med", "prod", 1)
    assert [v.ref for v in reg.serving()] == ["legal@1", "med@1"]  # the serving alias: prod
    reg.alias_set("legal", "staging", 2)
    reg.alias_set("legal", "prod", "staging")  # promote: an alias may name another alias
    assert reg.resolve("legal:prod").version == 2
    reg.alias_remove("legal", "prod")
    with pytest.raises(AdapterNotFoundError):
        reg.alias_remove("legal", "prod")
    with pytest.raises(VersionConflictError, match="implicit"):
        reg.alias_set("legal", "latest", 1)


def test_rm_refuses_aliased_then_force(reg, tiny_adapter_factory):
    reg.push(tiny_adapter_factory(1), "legal")
    reg.push(tiny_adapter_factory(2), "legal")
    reg.alias_set("legal", "prod", 1)
    with pytest.raises(VersionConflictError, match="legal:prod"):
        reg.rm("legal@1")
    assert [v.ref for v in reg.rm("legal@2")] == ["legal@2"]
    assert [v.ref for v in reg.rm("legal:prod", force=True)] == ["legal@1"]
    assert reg.list() == []
    with pytest.raises(AdapterNotFoundError):
        reg.resolve("legal")


def test_pull_export_local_path(reg, tiny_adapter, tmp_path):
    v = reg.push(tiny_adapter, "legal")
    out = reg.pull("legal", tmp_path / "out")
    for f in v.files:
        assert (out / f.path).read_bytes() == (tiny_adapter / f.path).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with pytest.raises(Exception, match="not an empty folder"):
        reg.pull("legal", out)
    lp = reg.local_path("legal@1")
    assert lp == reg.local_path(v.digest_ref) and (lp / "adapter_config.json").is_file()
    # a version already resolved is not looked up again
    resolve, reg.resolve = reg.resolve, None
    try:
        assert reg.local_path(v) == lp
    finally:
        reg.resolve = resolve
    exported = reg.export("legal", tmp_path / "peft")
    cfg = json.loads((exported / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"


def test_export_loads_with_peft(reg, tiny_adapter, tiny_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reg.push(tiny_adapter, "legal")
    folder = reg.export("legal", tmp_path / "peft")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(folder)
    )
    assert "default" in model.peft_config


def test_verify_and_pull_detect_corruption(reg, tiny_adapter, tmp_path):
    v = reg.push(tiny_adapter, "legal")
    assert reg.verify().ok
    w = next(f for f in v.files if f.path.endswith(".safetensors"))
    blob = reg.blobs.path(w.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    report = reg.verify("legal")
    assert not report.ok and w.digest in report.problems[0]
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        reg.pull("legal", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gc_dry_run_then_delete(reg, tiny_adapter_factory):
    v1 = reg.push(tiny_adapter_factory(1), "legal")
    v2 = reg.push(tiny_adapter_factory(2), "legal")
    reg.rm("legal@1")
    only_v1 = {f.digest for f in v1.files} - {f.digest for f in v2.files}
    dry = reg.gc(dry_run=True, grace_seconds=0)
    assert set(dry.removed) == only_v1 and all(reg.blobs.has(d) for d in only_v1)
    assert reg.gc(grace_seconds=3600).removed == []  # fresh blobs are protected
    done = reg.gc(grace_seconds=0)
    assert set(done.removed) == only_v1 and not any(reg.blobs.has(d) for d in only_v1)
    assert reg.verify().ok and reg.resolve("legal@2") == v2


def test_model_card_and_import(reg, tiny_adapter):
    v = reg.import_folder(tiny_adapter, "imported")
    assert v.ref == "imported@1"
    assert reg.model_card("imported") == (tiny_adapter / "README.md").read_text()


def test_open_registry_default_uses_settings(lr_home, tiny_adapter):
    reg = open_registry()
    assert isinstance(reg, Registry) and str(lr_home.registry_dir) in reg.url
    reg.push(tiny_adapter, "legal")
    assert reg.blobs.root == lr_home.blob_dir
