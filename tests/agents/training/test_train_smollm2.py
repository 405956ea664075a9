"""A few LoRA steps on the real SmolLM2-135M-Instruct: the PEFT folder names the base model."""

from __future__ import annotations

import json

import pytest

from loraroute.agents.training import TrainConfig, train_adapter

pytestmark = pytest.mark.slow

RECORDS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} plus {a}?"},
            {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."},
        ]
    }
    for a in range(1, 5)
]


def test_train_on_smollm2_writes_named_adapter(smollm2_path, tmp_path):
    from loraroute.models import fingerprint
    from loraroute.settings import get_settings

    settings = get_settings()  # conftest points LORAROUTE_HOME at the test home
    # small batch, short rows and only the top layers keep this to seconds on 2 CPU cores
    cfg = TrainConfig(
        max_steps=3, batch_size=2, max_length=64, rank=4, last_layers=2, learning_rate=1e-3
    )
    result = train_adapter(
        RECORDS, tmp_path / "add", base_model="smollm2-135m-instruct", settings=settings, config=cfg
    )
    assert result.metrics["train_steps"] == 3
    cfg_json = json.loads((tmp_path / "add" / "adapter_config.json").read_text())
    # portable: the Hub id of the model the embedded GGUF comes from, loadable anywhere
    assert cfg_json["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert result.base_model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg_json["layers_to_transform"] == [28, 29]
    assert result.base_fingerprint == fingerprint(smollm2_path, settings=settings)
