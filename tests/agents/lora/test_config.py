"""The LoRA kernels' options, read from the environment."""

from __future__ import annotations

import pydantic
import pytest
import torch

from loraroute.agents.lora.config import LoraKernelConfig
from loraroute.agents.lora.layer import carved_mm
from loraroute.settings import Settings


def test_options_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LORAROUTE_LORA_GEMM_SM_CARVEOUT", "16")
    monkeypatch.setenv("LORAROUTE_LORA_FUSED_ADDS", "false")
    config = LoraKernelConfig.from_settings(Settings(), backend="triton")
    assert (config.backend, config.gemm_sm_carveout, config.fused_adds) == ("triton", 16, False)
    monkeypatch.delenv("LORAROUTE_LORA_GEMM_SM_CARVEOUT")
    assert LoraKernelConfig().gemm_sm_carveout == Settings().lora_gemm_sm_carveout == 8
    monkeypatch.setenv("LORAROUTE_LORA_GEMM_SM_CARVEOUT", "-1")
    with pytest.raises(pydantic.ValidationError, match="lora_gemm_sm_carveout"):
        Settings()


def test_a_gemm_without_carveout_is_a_plain_product():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    assert torch.equal(carved_mm(x, w, 0), x @ w)


def test_l2_hints_are_off_by_default_and_read_from_the_environment(monkeypatch):
    assert LoraKernelConfig().l2_prefetch == Settings().lora_l2_prefetch == 0
    monkeypatch.setenv("LORAROUTE_LORA_L2_PREFETCH", "1536")
    monkeypatch.setenv("LORAROUTE_LORA_L2_EVICT_LAST", "false")
    monkeypatch.setenv("LORAROUTE_LORA_L2_PREFETCH_AT", "attention")
    config = LoraKernelConfig.from_settings(Settings())
    assert (config.l2_prefetch, config.l2_evict_last) == (1536, False)
    assert config.l2_prefetch_at == "attention" and LoraKernelConfig().l2_prefetch_at == "each"
    monkeypatch.setenv("LORAROUTE_LORA_L2_PREFETCH_AT", "everywhere")
    with pytest.raises(pydantic.ValidationError, match="lora_l2_prefetch_at"):
        Settings()
    monkeypatch.setenv("LORAROUTE_LORA_L2_PREFETCH_AT", "each")
    monkeypatch.setenv("LORAROUTE_LORA_L2_PREFETCH", "-1")
    with pytest.raises(pydantic.ValidationError, match="lora_l2_prefetch"):
        Settings()


def test_a_plan_off_cuda_has_no_hint_stream():
    from loraroute.agents.lora.plan import StaticPlanBuffers

    buffers = StaticPlanBuffers(4, torch.device("cpu"))
    buffers.write([1, 2, 0, 1])
    plan = buffers.plan(1, LoraKernelConfig(l2_prefetch=1024))
    assert plan.fetch is None and plan.side is None and not plan.fetch_open
