"""``adapters serve``: option checks through CliRunner, and the real command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from loraroute.cli import main


def test_serve_help_lists_the_main_options():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--api-key", "--engine-url", "--max-queue", "--cors-origin", "--preload"):
        assert option in result.output
    for option in ("--max-cpu-adapters", "--lora-backend", "--no-cuda-graphs", "--adapter-weights"):
        assert option in result.output


def test_engine_options_are_checked_before_loading_anything(monkeypatch):
    # a machine without CUDA (or without Triton) cannot run the Triton kernels
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    result = CliRunner().invoke(main, ["serve", "--device", "cpu", "--lora-backend", "triton"])
    assert result.exit_code == 2 and "not available" in result.output
    assert "loading base model" not in result.output
    # int8 adapter weights need those kernels too
    result = CliRunner().invoke(main, ["serve", "--device", "cpu", "--adapter-weights", "int8"])
    assert result.exit_code == 2 and "Triton LoRA kernels only" in result.output
    assert "loading base model" not in result.output
    result = CliRunner().invoke(
        main, ["serve", "--engine-url", "http://gpu-1:8000", "--no-cuda-graphs"]
    )
    assert result.exit_code == 2 and "--no-cuda-graphs" in result.output
    # and the proxy's option without a proxy
    result = CliRunner().invoke(main, ["serve", "--engine-adapter-dir", "/mnt/checkouts"])
    assert result.exit_code == 2 and "--engine-url" in result.output


def test_non_loopback_without_keys_is_refused_before_loading_anything(monkeypatch):
    monkeypatch.delenv("LORAROUTE_API_KEYS", raising=False)
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--api-key" in result.output and "Traceback" not in result.output


def test_bad_engine_url_is_a_clean_error():
    result = CliRunner().invoke(main, ["serve", "--engine-url", "gpu-1:8000"])
    assert result.exit_code == 2 and "http://" in result.output


KEY = "sk-cli-test-key-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_with_a_key_and_a_preloaded_adapter(lr_home, tiny_base, tiny_adapter_factory):
    """... and logs JSON lines: one per request with its id, never the key."""
    import openai

    from loraroute.models import fingerprint
    from loraroute.registry import open_registry

    reg = open_registry(settings=lr_home)
    v = reg.push(
        tiny_adapter_factory(1), "legal", base_fingerprint=fingerprint(tiny_base, settings=lr_home)
    )
    port = _free_port()
    cmd = [sys.executable, "-m", "loraroute.cli", "serve", "--base-model", str(tiny_base)]
    cmd += ["--device", "cpu", "--port", str(port), "--api-key", KEY, "--preload", "legal"]
    cmd += ["--no-router", "--log-level", "info", "--log-json"]
    cmd += ["--max-cpu-adapters", "2", "--lora-backend", "torch", "--no-cuda-graphs"]
    proc = subprocess.Popen(
        cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.25)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        out = client.chat.completions.create(
            model="legal",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            extra_headers={"X-Request-Id": "cli-req-1"},
        )
        assert out.model == v.ref
        assert out.model_extra["loraroute"]["adapter_digest"] == v.digest
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0).models.list()
        # --no-router: auto answers with the base model and says why
        auto = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
        assert auto.model_extra["loraroute"]["adapter"] is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    output = proc.stdout.read() if proc.stdout else ""
    assert KEY not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (request,) = [r for r in lines if r.get("request_id") == "cli-req-1" and "status" in r]
    assert request["status"] == 200 and request["adapter"] == v.ref and request["model"] == "legal"
    assert request["completion_tokens"] >= 1 and request["latency_s"] > 0
