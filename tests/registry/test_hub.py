"""Hub in, Hub out: adapters from a Hugging Face cache (snapshot symlinks into ``blobs/``, or
``hf://org/name[@rev]`` with ``HF_HUB_OFFLINE=1``), plain PEFT folders and adapters trained
here all round-trip push -> pull -> ``PeftModel.from_pretrained`` with identical tensors;
``export --hub`` writes a Hub-ready folder with a real model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loraroute.registry import InvalidAdapterError, open_registry
from loraroute.registry.errors import InvalidReferenceError, InvalidRequestError
from loraroute.registry.hub import cache_blobs, export_for_hub, parse_hub_ref
from loraroute.registry.testing import make_hub_cache, make_variant

REPO = "my-org/cooking-lora"


@pytest.fixture
def reg(lr_home):
    r = open_registry(settings=lr_home)
    yield r
    r.close()


def peft_tensors(base: Path, folder: Path) -> dict:
    """The LoRA weights as PEFT itself loads them onto ``base``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(folder))
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].equal(b[key]), key


def test_hub_cache_snapshot_round_trips(reg, tiny_base, tiny_adapter, tmp_path):
    snapshot = make_hub_cache(
        tmp_path / "hf" / "hub", REPO, tiny_adapter, extra={"training_args.bin": b"\x80pickle"}
    )
    assert (snapshot / "adapter_model.safetensors").is_symlink()
    assert cache_blobs(snapshot) == snapshot.parent.parent / "blobs"
    v = reg.push(snapshot, "cooking")
    assert v.tags["source"] == f"hf://{REPO}@{snapshot.name}"
    assert sorted(f.path for f in v.files) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    pulled = reg.pull("cooking@1", tmp_path / "pulled")
    assert not any(p.is_symlink() for p in pulled.iterdir())
    assert_same(peft_tensors(tiny_base, pulled), peft_tensors(tiny_base, tiny_adapter))


def test_plain_peft_folder_round_trips_and_loads_with_auto_peft(
    reg, tiny_base, tiny_adapter, tmp_path
):
    from peft import AutoPeftModelForCausalLM

    reg.push(tiny_adapter, "legal")  # save_pretrained's folder, base named by its path
    pulled = reg.pull("legal", tmp_path / "legal")
    config = json.loads((pulled / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base)
    model = AutoPeftModelForCausalLM.from_pretrained(str(pulled))  # loads the base it names
    got = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert_same(got, peft_tensors(tiny_base, tiny_adapter))


def test_adapter_trained_here_is_portable(reg, lr_home, tiny_base, tmp_path):
    from peft import AutoPeftModelForCausalLM

    from loraroute.agents.training import TrainConfig, train_adapter

    chats = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(4)
    ]
    out = train_adapter(
        chats,
        tmp_path / "run",
        base_model=str(tiny_base),
        settings=lr_home,
        config=TrainConfig(max_steps=1, batch_size=2, max_length=32),
    )
    config = json.loads((out.output_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.resolve()) == out.base_model_id
    v = reg.push(out.output_dir, "trained", base_fingerprint=out.base_fingerprint)
    assert v.base_fingerprint == out.base_fingerprint  # the exact base stays in the registry
    pulled = reg.pull(v.ref, tmp_path / "pulled")
    model = AutoPeftModelForCausalLM.from_pretrained(str(pulled))
    got = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert_same(got, peft_tensors(tiny_base, out.output_dir))
    assert (
        load_file(pulled / "adapter_model.safetensors").keys()
        == load_file(out.output_dir / "adapter_model.safetensors").keys()
    )


def test_the_embedded_base_is_named_by_its_hub_id(lr_home):
    from loraroute.models import SMOLLM2_HUB_ID, resolve_base_model

    embedded = resolve_base_model("smollm2-135m-instruct", settings=lr_home, convert=False)
    assert embedded.portable_name == SMOLLM2_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    by_id = resolve_base_model(SMOLLM2_HUB_ID, settings=lr_home, convert=False)
    assert (by_id.source, by_id.path) == ("embedded", embedded.path)  # offline, no download


def test_symlinks_stay_inside_the_cache_blobs(reg, tiny_adapter, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text("not an adapter file")
    cache = tmp_path / "hf" / "hub"

    def snapshot(name: str) -> Path:
        return make_hub_cache(cache, f"org/{name}", tiny_adapter)

    outside = snapshot("outside")
    (outside / "README.md").unlink()
    (outside / "README.md").symlink_to(victim / "secret.txt")
    with pytest.raises(InvalidAdapterError, match="outside the Hugging Face cache"):
        reg.push(outside, "x")

    chained = snapshot("chained")
    hop = chained / "hop"
    hop.symlink_to(chained / "adapter_config.json")  # a link to a link
    with pytest.raises(InvalidAdapterError, match="symlink to a symlink"):
        reg.push(chained, "x")

    folder_link = snapshot("folder-link")
    (folder_link / "sub").symlink_to(victim, target_is_directory=True)
    with pytest.raises(InvalidAdapterError, match="'sub' is a symlink"):
        reg.push(folder_link, "x")

    plain = tmp_path / "plain"  # not a Hub cache: every symlink is refused, as before
    plain.mkdir()
    for f in tiny_adapter.iterdir():
        (plain / f.name).symlink_to(f)
    with pytest.raises(InvalidAdapterError, match="is a symlink"):
        reg.push(plain, "x")
    assert reg.names() == [] and (victim / "secret.txt").read_text() == "not an adapter file"


def test_hub_references_parse_strictly():
    ref = parse_hub_ref("hf://my-org/cooking-lora@v1.0")
    assert (ref.repo_id, ref.revision, ref.name, str(ref)) == (
        REPO,
        "v1.0",
        "cooking-lora",
        "hf://my-org/cooking-lora@v1.0",
    )
    assert parse_hub_ref("hf://models/my-org/x").repo_id == "my-org/x"
    assert parse_hub_ref("./cooking") is None
    for bad in ("hf://cooking", "hf://a/b/c", "hf://org/name@", "hf://org/na me", "hf://o/n@../x"):
        with pytest.raises(InvalidReferenceError, match="hf://org/name"):
            parse_hub_ref(bad)


def _adapters(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loraroute.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_push_hf_uri_offline_from_the_cache(lr_home, tiny_base, tiny_adapter, tmp_path):
    hf_home = tmp_path / "hf"
    snapshot = make_hub_cache(
        hf_home / "hub", REPO, tiny_adapter, extra={"training_args.bin": b"\x80pickle"}
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "LORAROUTE_HOME": str(lr_home.home),
    }
    env.pop("HF_HUB_CACHE", None)
    out = _adapters("push", f"hf://{REPO}", "--alias", "prod", "--json", env=env)
    assert out.returncode == 0, out.stderr
    v = json.loads(out.stdout)
    assert (v["ref"], v["live"]) == ("cooking-lora@1", True)  # named after the repository
    assert v["tags"]["source"] == f"hf://{REPO}@{snapshot.name}"
    pinned = _adapters(
        "push", f"hf://{REPO}@{snapshot.name}", "--name", "pinned", "--json", env=env
    )
    assert (
        json.loads(pinned.stdout)["digest"] == v["digest"] and not json.loads(pinned.stdout)["live"]
    )

    missing = _adapters("push", "hf://my-org/nope@main", env=env)
    assert missing.returncode == 1
    assert (
        "not in the local Hugging Face cache" in missing.stderr
        and "Traceback" not in missing.stderr
    )

    reg = open_registry(settings=lr_home)
    pulled = reg.pull("cooking-lora", tmp_path / "pulled")
    assert_same(peft_tensors(tiny_base, pulled), peft_tensors(tiny_base, tiny_adapter))


def test_export_for_the_hub_writes_a_model_card(reg, tiny_adapter, tmp_path):
    from huggingface_hub import ModelCard

    reg.push(
        tiny_adapter,
        "cooking",
        domain="cooking",
        description="Kitchen answers.",
        metrics={"eval_loss": 1.25},
        training_config={"rank": 4, "init_adapter": str(tmp_path / "parent")},
        license="apache-2.0",
    )
    with pytest.raises(InvalidRequestError, match="local base model folder.*--base-model"):
        export_for_hub(reg, "cooking@1", tmp_path / "x", repo_id="me/cooking")
    assert not (tmp_path / "x").exists()  # refused before anything was written

    done = export_for_hub(
        reg,
        "cooking@1",
        tmp_path / "hub",
        repo_id="me/cooking",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        datasets=["me/kitchen-chats"],
    )
    card = ModelCard.load(done.folder / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft"
    assert {"lora", "peft", "cooking"} <= set(card.data.tags)
    assert card.data.datasets == ["me/kitchen-chats"] and card.data.metrics == ["eval_loss"]
    assert card.data.eval_results[0].metric_value == 1.25 and card.data.license == "apache-2.0"
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/cooking")' in card.text
    config = json.loads((done.folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for f in done.folder.rglob("*"):  # no local path anywhere in the folder
        if f.suffix in (".json", ".md"):
            assert str(tmp_path) not in f.read_text() and "/tmp" not in f.read_text()

    # a card the adapter brought along (a Hub adapter's) is kept, its metadata completed
    own = make_variant(tiny_adapter, tmp_path / "own", "x")
    (own / "README.md").write_text("# Cooking expert\n\nWritten by its author.\n")
    reg.push(own, "cooking", base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    kept = export_for_hub(reg, "cooking@2", tmp_path / "hub2", repo_id="me/cooking")
    card = ModelCard.load(kept.folder / "README.md")
    assert "Written by its author." in card.text
    assert (card.data.base_model, card.data.library_name) == (kept.base_model, "peft")


def test_export_cli_hub_and_upload_offline(lr_home, tiny_adapter, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from loraroute.cli import main

    reg = open_registry(settings=lr_home)
    reg.push(tiny_adapter, "cooking", base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    run = CliRunner().invoke
    out = run(main, ["export", "cooking", str(tmp_path / "a"), "--hub", "me/cooking", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # offline (the tests' HF_HUB_OFFLINE=1): the folder is written, the upload says what to do
    up = run(main, ["export", "cooking", str(tmp_path / "b"), "--hub", "me/cooking", "--upload"])
    assert up.exit_code == 1 and "hf upload me/cooking" in up.output
    assert (tmp_path / "b" / "README.md").is_file()
    plain = run(main, ["export", "cooking", str(tmp_path / "c"), "--upload"])
    assert plain.exit_code == 2 and "--hub" in plain.output
    monkeypatch.chdir(tmp_path)  # DEST defaults to the repository's name, in the current folder
    named = run(main, ["export", "cooking", "--hub", "me/cooking-lora", "--json"])
    assert json.loads(named.output)["folder"] == str(tmp_path / "cooking-lora"), named.output
    assert (tmp_path / "cooking-lora" / "adapter_model.safetensors").is_file()


def test_push_through_an_http_registry_takes_hub_sources(
    lr_home, tiny_adapter, tmp_path, sqlite_store, serve
):
    from loraroute.registry import RemoteRegistry
    from loraroute.registry.auth import create_token
    from loraroute.registry.server import create_app

    snapshot = make_hub_cache(tmp_path / "hf" / "hub", REPO, tiny_adapter)
    with serve(create_app(sqlite_store)) as srv:
        remote = RemoteRegistry(srv.url, token=create_token(sqlite_store, "write"))
        v = remote.push(snapshot, "cooking")
        assert v.tags["source"] == f"hf://{REPO}@{snapshot.name}" and remote.serving() == []
        remote.alias_set("cooking", "prod", v.version)
        assert [x.ref for x in remote.serving()] == ["cooking@1"]
