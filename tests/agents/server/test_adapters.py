"""vLLM-compatible adapter endpoints, and the scale-out proxy in front of a second server."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from loraroute.agents.server import BackgroundServer, LocalBackend, ServerConfig, create_app

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-adapters"),
        tiny_base,
        {
            "legal": [tiny_adapter_factory(1)],
            "math": [tiny_adapter_factory(3)],
            "cooking": [tiny_adapter_factory(4)],
        },
    )
    yield s
    s.close()


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


def test_load_and_unload_like_vllm(stack, tiny_adapter_factory, tmp_path, tmp_path_factory):
    roots = [tmp_path_factory.getbasetemp()]  # where the tiny adapters are written
    with BackgroundServer(stack.app(adapter_roots=roots)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="-", max_retries=0)
        folder = str(tiny_adapter_factory(7))
        r = _post(srv.url, "/v1/load_lora_adapter", {"lora_name": "med", "lora_path": folder})
        assert r.status_code == 200 and r.text.startswith("Success")
        cards = {m.id: m for m in client.models.list().data}
        assert cards["med"].model_extra["loraroute"]["kind"] == "loaded"
        out = client.chat.completions.create(model="med", messages=USER, max_tokens=2)
        assert out.model == "med" and out.model_extra["loraroute"]["adapter_digest"]
        again = _post(srv.url, "/v1/load_lora_adapter", {"lora_name": "med", "lora_path": folder})
        assert again.status_code == 200 and "already" in again.text
        other = str(tiny_adapter_factory(8))
        clash = _post(srv.url, "/v1/load_lora_adapter", {"lora_name": "med", "lora_path": other})
        assert clash.status_code == 409 and "load_inplace" in clash.json()["error"]["message"]
        inplace = _post(
            srv.url,
            "/v1/load_lora_adapter",
            {"lora_name": "med", "lora_path": other, "load_inplace": True},
        )
        assert inplace.status_code == 200
        r = _post(srv.url, "/v1/unload_lora_adapter", {"lora_name": "med"})
        assert r.status_code == 200 and "removed" in r.text
        with pytest.raises(openai.NotFoundError, match="med"):
            client.chat.completions.create(model="med", messages=USER, max_tokens=2)
        r = _post(srv.url, "/v1/unload_lora_adapter", {"lora_name": "med"})
        assert r.status_code == 404 and "med" in r.json()["error"]["message"]
        bad = _post(
            srv.url, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "no")}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path"
        (tmp_path / "junk").mkdir()
        junk = _post(
            srv.url,
            "/v1/load_lora_adapter",
            {"lora_name": "x", "lora_path": str(tmp_path / "junk")},
        )
        assert junk.status_code == 400 and "adapter_config.json" in junk.text
        reserved = _post(
            srv.url, "/v1/load_lora_adapter", {"lora_name": "auto", "lora_path": folder}
        )
        assert reserved.status_code == 400 and "reserved" in reserved.text
        # a registry adapter made resident by a request can be unloaded too
        client.chat.completions.create(model="math", messages=USER, max_tokens=1)
        assert _post(srv.url, "/v1/unload_lora_adapter", {"lora_name": "math@1"}).status_code == 200
        assert "math@1" not in {e["ref"] for e in stack.engine.resident()}


def test_load_reads_only_registry_refs_and_folders_under_its_roots(
    stack, tiny_adapter_factory, tmp_path
):
    """A path outside the roots is refused with one message whether or not it exists (the
    answer tells nothing of the server's disk); a symlink out of a root is outside; a
    registry ref loads the verified checkout."""
    import shutil

    root = tmp_path / "roots"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_adapter_factory(7), outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with BackgroundServer(stack.app(adapter_roots=[root])) as srv:
        answers = [
            _post(srv.url, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path})
            for path in (str(outside), str(tmp_path / "missing"), str(root / "escape"))
        ]
        assert {r.status_code for r in answers} == {400}
        assert len({r.json()["error"]["message"] for r in answers}) == 1
        assert all(str(tmp_path) not in r.text for r in answers)
        inside = root / "med"
        shutil.copytree(tiny_adapter_factory(7), inside)
        ok = _post(srv.url, "/v1/load_lora_adapter", {"lora_name": "med", "lora_path": str(inside)})
        assert ok.status_code == 200, ok.text
        ref = _post(
            srv.url, "/v1/load_lora_adapter", {"lora_name": "lawyer", "lora_path": "legal@1"}
        )
        assert ref.status_code == 200, ref.text
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="-", max_retries=0)
        out = client.chat.completions.create(model="lawyer", messages=USER, max_tokens=2)
        assert out.model_extra["loraroute"]["adapter_digest"]
        missing = _post(srv.url, "/v1/load_lora_adapter", {"lora_name": "y", "lora_path": "legl"})
        assert missing.status_code == 404 and "legl" in missing.text


def test_adapter_loading_can_be_disabled(stack, tiny_adapter_factory):
    with BackgroundServer(stack.app(allow_adapter_loading=False)) as srv:
        body = {"lora_name": "med", "lora_path": str(tiny_adapter_factory(7))}
        r = _post(srv.url, "/v1/load_lora_adapter", body)
        assert r.status_code == 403 and "--no-adapter-loading" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def engine_server(tiny_base, tmp_path_factory):
    """A second server acting as the external engine: no registry, two adapter slots."""
    from loraroute.agents.runtime.engine import Engine

    engine = Engine(tiny_base, device="cpu", max_resident=2)
    # the proxy's registry checkouts, as this engine sees them (one machine in the tests)
    roots = [tmp_path_factory.getbasetemp()]
    app = create_app(
        LocalBackend(engine, adapter_roots=roots), config=ServerConfig(), open_router=False
    )
    with BackgroundServer(app) as srv:
        srv.engine = engine
        yield srv
    engine.close()


def _engine_count(url: str, adapter: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(
        rf'loraroute_requests_total{{adapter="{re.escape(adapter)}",status="ok"}} (\S+)', text
    )
    return float(m.group(1)) if m else 0.0


def test_proxy_routes_pushes_adapters_and_forwards(stack, engine_server):
    from loraroute.agents.server.proxy import ProxyBackend

    backend = ProxyBackend(engine_server.url, registry=stack.registry)
    app = create_app(backend, router=stack.router)
    with BackgroundServer(app) as front:
        client = openai.OpenAI(base_url=front.url + "/v1", api_key="-", max_retries=0)
        math = stack.registry.resolve("math:prod")
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "solve 3x + 1 = 10 for x"}],
            max_tokens=4,
            temperature=0,
        )
        assert raw.headers["x-loraroute-adapter"] == math.ref
        assert raw.headers["x-loraroute-adapter-digest"] == math.digest
        out = raw.parse()
        assert out.model == math.ref and out.model_extra["loraroute"]["routed"] is True
        assert out.usage.completion_tokens == 4
        # the engine got the adapter through its load endpoint and served the request
        engine_models = httpx.get(engine_server.url + "/v1/models").json()["data"]
        assert math.ref in {m["id"] for m in engine_models}
        assert _engine_count(engine_server.url, math.ref) == 1
        # the same request straight to the engine gives the same greedy answer
        direct = openai.OpenAI(base_url=engine_server.url + "/v1", api_key="-").chat.completions
        same = direct.create(
            model=math.ref,
            messages=[{"role": "user", "content": "solve 3x + 1 = 10 for x"}],
            max_tokens=4,
            temperature=0,
        )
        assert same.choices[0].message.content == out.choices[0].message.content
        # streaming through the proxy
        chunks = list(
            client.chat.completions.create(
                model="legal:prod",
                messages=USER,
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].model_extra["loraroute"]["adapter"] == "legal@1"
        assert chunks[-1].usage.completion_tokens == 3
        # three adapters, two engine slots: the evicted one is pushed again on the next request
        client.chat.completions.create(model="cooking", messages=USER, max_tokens=1)
        pushes = backend.pushes
        again = client.chat.completions.create(model="math", messages=USER, max_tokens=1)
        assert again.model == math.ref and backend.pushes == pushes + 1
        # base requests go to the engine's base model
        base = client.chat.completions.create(model="base", messages=USER, max_tokens=1)
        assert base.model == "base"
        # errors keep their 4xx status through the proxy
        with pytest.raises(openai.NotFoundError, match="legl"):
            client.chat.completions.create(model="legl", messages=USER, max_tokens=1)
        with pytest.raises(openai.BadRequestError, match="context"):
            client.chat.completions.create(
                model="base", messages=[{"role": "user", "content": "word " * 5000}], max_tokens=1
            )
        ids = {m.id for m in client.models.list().data}
        assert {"base", "auto", "legal:prod", math.ref} <= ids
        metrics = httpx.get(front.url + "/metrics").text
        assert f"loraroute_adapter_loads_total {float(backend.pushes)}" in metrics
        assert httpx.get(front.url + "/ready").json()["status"] == "ready"


def test_proxy_tells_an_engine_on_another_mount_where_the_adapter_is(
    stack, engine_server, tmp_path
):
    """--engine-adapter-dir: the engine sees the registry's checkouts under another path."""
    from loraroute.agents.server.proxy import ProxyBackend

    folder = stack.registry.local_path("legal:prod")
    mount = tmp_path / "engine-mount"
    mount.symlink_to(folder.parent, target_is_directory=True)  # the same files, another path
    for adapter_dir, status in ((str(mount), 200), (str(tmp_path / "not-mounted"), 502)):
        if any(e["ref"] == "legal@1" for e in engine_server.engine.resident()):
            engine_server.engine.evict("legal@1")  # so that the proxy pushes it again
        backend = ProxyBackend(engine_server.url, registry=stack.registry, adapter_dir=adapter_dir)
        with BackgroundServer(create_app(backend, open_router=False)) as front:
            r = httpx.post(
                front.url + "/v1/chat/completions",
                json={"model": "legal:prod", "messages": USER, "max_tokens": 1},
                timeout=60,
            )
        assert r.status_code == status, r.text
        if status == 502:
            message = r.json()["error"]["message"]
            assert f"{adapter_dir}/{folder.name}" in message


def test_proxy_reports_an_unreachable_engine(stack):
    from loraroute.agents.server.proxy import ProxyBackend

    app = create_app(
        ProxyBackend("http://127.0.0.1:9/v1", registry=stack.registry), open_router=False
    )
    with BackgroundServer(app) as front:
        assert httpx.get(front.url + "/ready").status_code == 503
        r = httpx.post(
            front.url + "/v1/chat/completions", json={"model": "legal", "messages": USER}
        )
        assert r.status_code == 502 and "cannot be reached" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="http"):
        ProxyBackend("gpu-1:8000")


@pytest.mark.parametrize(
    "broken",
    ["r_zero", "r_text", "no_peft_type", "rank_contradicts", "symlinked_weights", "nan", "empty"],
)
def test_malformed_folders_are_a_clear_400_at_the_load_endpoint(stack, tmp_path, broken):
    """What the probe found looser at /v1/load_lora_adapter than at push: each a 400 naming
    the problem, the connection kept, the server serving on."""
    import numpy as np

    from loraroute.registry.testing import write_lora_folder

    root = tmp_path / "roots"
    folder = root / "bad"
    config = {
        "r_zero": {"r": 0},
        "r_text": {"r": "4"},
        "no_peft_type": {"peft_type": None},
        "rank_contradicts": {"r": 8},
    }.get(broken)
    write_lora_folder(folder, config=config)
    weights = folder / "adapter_model.safetensors"
    if broken == "symlinked_weights":
        real = tmp_path / "real.safetensors"
        weights.rename(real)
        weights.symlink_to(real)
    elif broken == "nan":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(weights))
        key = next(iter(tensors))
        tensors[key] = tensors[key].copy()
        tensors[key].flat[0] = np.nan
        save_file(tensors, str(weights))
    elif broken == "empty":
        weights.write_bytes(b"")
    with BackgroundServer(stack.app(adapter_roots=[root])) as srv:
        r = _post(srv.url, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": str(folder)})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "lora_path" and str(tmp_path) not in r.text
        assert httpx.get(srv.url + "/health").status_code == 200
