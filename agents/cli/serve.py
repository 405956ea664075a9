"""``adapters serve``: the OpenAI-compatible chat server (in-process engine or proxy)."""

from __future__ import annotations

import click

from loraroute.cli_options import registry_options

_MIB = 1024 * 1024


@click.command("serve")
@click.option("--host", default=None, help="Address to bind (default: settings, 127.0.0.1).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--base-model", default=None, help="Base model name or folder (default: settings).")
@registry_options
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: settings).")
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="Accept this bearer key (repeatable; added to LORAROUTE_API_KEYS=k1,k2). Required when "
    "--host is not a loopback address.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve a non-loopback host without API keys (only behind an authenticating proxy).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Allow browser calls from this origin (repeatable; '*' for any; default: "
    "LORAROUTE_CORS_ORIGINS).",
)
@click.option("--cors-allow-credentials", is_flag=True)
@click.option("--max-batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--max-resident", default=16, show_default=True, type=click.IntRange(1))
@click.option(
    "--max-cpu-adapters",
    default=None,
    type=click.IntRange(0),
    help="Adapters kept in pinned host memory behind the device slots "
    "(default: 4 x --max-resident on CUDA, none on CPU).",
)
@click.option(
    "--lora-backend",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "triton", "torch"]),
    help="Mixed-adapter LoRA kernels: Triton on CUDA when installed (auto), or PyTorch.",
)
@click.option(
    "--no-cuda-graphs", is_flag=True, help="Run decode steps eagerly on CUDA (no graph replay)."
)
@click.option(
    "--kv-cache",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "paged", "dense"]),
    help="Paged KV cache with chunked prefill (auto: for Llama-family models), or dense.",
)
@click.option(
    "--kv-cache-tokens",
    default=None,
    type=click.IntRange(1),
    help="Tokens the paged KV cache holds (default: --max-batch-size full contexts, at most "
    "90% of the free GPU memory).",
)
@click.option(
    "--adapter-weights",
    default="model",
    show_default=True,
    type=click.Choice(["model", "int8"]),
    help="Adapters in device slots in the model's dtype, or int8 with a scale per rank (half "
    "the memory and the bytes a decode step reads; the Triton LoRA kernels only).",
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(0),
    help="Requests admitted beyond those generating; more get 429 with Retry-After.",
)
@click.option(
    "--max-concurrency",
    default=None,
    type=click.IntRange(1),
    help="Requests generating at once (default: --max-batch-size; proxy: 64).",
)
@click.option("--request-timeout", default=300.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--max-request-bytes", default=4 * _MIB, show_default=True, type=click.IntRange(1024))
@click.option(
    "--default-max-tokens",
    default=512,
    show_default=True,
    type=click.IntRange(1),
    help="max_tokens when a request gives none.",
)
@click.option(
    "--max-tokens-limit",
    default=None,
    type=click.IntRange(1),
    help="Refuse requests asking for more tokens (default: the context size).",
)
@click.option("--preload", multiple=True, help="Adapter refs to load at start (repeatable).")
@click.option(
    "--adapter-root",
    "adapter_roots",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="A folder under which /v1/load_lora_adapter may read adapter folders (repeatable; "
    "added to LORAROUTE_ADAPTER_ROOTS). Registry refs and the registry's checkouts always work.",
)
@click.option("--no-router", is_flag=True, help='Do not open the router: model="auto" -> base.')
@click.option(
    "--no-adapter-loading",
    is_flag=True,
    help="Refuse /v1/load_lora_adapter and /v1/unload_lora_adapter.",
)
@click.option(
    "--engine-url",
    default=None,
    help="Proxy mode: generate on this external OpenAI-compatible engine (vLLM, another "
    "adapters serve); adapters are pushed to it from the registry (default: settings).",
)
@click.option(
    "--engine-api-key", default=None, help="Bearer key of --engine-url (default: settings)."
)
@click.option("--engine-base-model", default=None, help="The engine's name for its base model.")
@click.option(
    "--engine-adapter-dir",
    default=None,
    help="Where the engine's host sees this registry's checkout folder (shared storage "
    "mounted elsewhere); default: the same path as here.",
)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Serve on a Ray cluster with Ray Serve: this API and the router in an ingress, the "
    "base model in engine replicas, each request sent to a replica that holds its adapter "
    "(pip install 'loraroute[ray]').",
)
@click.option(
    "--ray-address",
    default=None,
    help="With --ray: the cluster to join ('auto', 'ray://head:10001'; default: settings, "
    "else Ray's own: RAY_ADDRESS or a new local cluster).",
)
@click.option(
    "--replicas",
    default=None,
    type=click.IntRange(1),
    help="With --ray: engine replicas (fixed count) [default: 1].",
)
@click.option(
    "--min-replicas",
    default=None,
    type=click.IntRange(0),
    help="With --ray: autoscale, at least this many replicas [default: 1].",
)
@click.option(
    "--max-replicas",
    default=None,
    type=click.IntRange(1),
    help="With --ray: autoscale, at most this many replicas (turns autoscaling on).",
)
@click.option(
    "--target-ongoing-requests",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="With --ray and autoscaling: requests per replica Serve aims for (default: 0.7 x "
    "--max-ongoing-requests).",
)
@click.option(
    "--max-ongoing-requests",
    default=None,
    type=click.IntRange(1),
    help="With --ray: requests Serve sends one replica at once; more go to another replica "
    "(default: --max-batch-size).",
)
@click.option(
    "--cpus-per-replica", default=None, type=click.FloatRange(0), help="With --ray [default: 1]."
)
@click.option(
    "--gpus-per-replica",
    default=None,
    type=click.FloatRange(0),
    help="With --ray (default: 1 with --device cuda, else 0).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-json/--no-log-json",
    default=None,
    help="Log JSON lines (one per request: id, model asked, adapter, route score, tokens, "
    "latency, status) instead of text (default: LORAROUTE_LOG_JSON, off).",
)
def serve_cmd(
    host: str | None,
    port: int,
    base_model: str | None,
    registry_url: str | None,
    token: str | None,
    device: str | None,
    api_keys: tuple[str, ...],
    insecure_no_auth: bool,
    cors_origins: tuple[str, ...],
    cors_allow_credentials: bool,
    max_batch_size: int,
    max_resident: int,
    max_cpu_adapters: int | None,
    lora_backend: str,
    no_cuda_graphs: bool,
    kv_cache: str,
    kv_cache_tokens: int | None,
    adapter_weights: str,
    max_queue: int,
    max_concurrency: int | None,
    request_timeout: float,
    max_request_bytes: int,
    default_max_tokens: int,
    max_tokens_limit: int | None,
    preload: tuple[str, ...],
    adapter_roots: tuple[str, ...],
    no_router: bool,
    no_adapter_loading: bool,
    engine_url: str | None,
    engine_api_key: str | None,
    engine_base_model: str | None,
    engine_adapter_dir: str | None,
    use_ray: bool,
    ray_address: str | None,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    target_ongoing_requests: float | None,
    max_ongoing_requests: int | None,
    cpus_per_replica: float | None,
    gpus_per_replica: float | None,
    log_level: str,
    log_json: bool | None,
) -> None:
    """Serve an OpenAI-compatible chat API with model="auto" routing.

    \b
    Examples:
      adapters serve                                  # 127.0.0.1:8000, no key needed
      adapters serve --host 0.0.0.0 --api-key "$KEY"  # reachable from elsewhere: key required
      adapters serve --engine-url http://gpu-1:8000   # route here, generate on vLLM
      adapters serve --device cuda --max-batch-size 32 --max-resident 64
      adapters serve --ray --replicas 2 --max-resident 64  # Ray Serve, adapter affinity
      adapters serve --ray --ray-address auto --device cuda --min-replicas 1 --max-replicas 8
    """
    from pydantic import ValidationError

    from loraroute.settings import get_settings

    from ..server import ServerConfig, create_app, serve

    settings = get_settings()
    host = host or settings.host
    engine_url = engine_url or settings.engine_url
    if engine_api_key is None and settings.engine_api_key is not None:
        engine_api_key = settings.engine_api_key.get_secret_value()
    try:
        config = ServerConfig(
            host=host,
            port=port,
            api_keys=list(api_keys) + settings.api_keys,
            insecure_no_auth=insecure_no_auth,
            cors_origins=list(cors_origins) or settings.cors_origins,
            cors_allow_credentials=cors_allow_credentials,
            max_queue=max_queue,
            max_concurrency=max_concurrency,
            request_timeout=request_timeout,
            max_request_bytes=max_request_bytes,
            default_max_tokens=default_max_tokens,
            max_tokens_limit=max_tokens_limit,
            allow_adapter_loading=not no_adapter_loading,
            decision_log=settings.decision_log,
            decision_log_text=settings.decision_log_text,
            decision_log_max_rows=settings.decision_log_max_rows,
            drift_interval=settings.drift_interval,
        )
    except ValidationError as exc:
        raise click.UsageError("; ".join(e["msg"] for e in exc.errors())) from exc
    from ..server.logs import configure_logging

    configure_logging(log_level, json_lines=settings.log_json if log_json is None else log_json)
    ray_options = {
        "--ray-address": ray_address,
        "--replicas": replicas,
        "--min-replicas": min_replicas,
        "--max-replicas": max_replicas,
        "--target-ongoing-requests": target_ongoing_requests,
        "--max-ongoing-requests": max_ongoing_requests,
        "--cpus-per-replica": cpus_per_replica,
        "--gpus-per-replica": gpus_per_replica,
    }
    if use_ray:
        from ._ray import serve_ray

        conflicts = {
            "--engine-url": engine_url,
            "--engine-adapter-dir": engine_adapter_dir,
            "--preload": preload,
        }
        given = [name for name, value in conflicts.items() if value]
        if given:
            raise click.UsageError(f"{', '.join(given)}: not with --ray")
        serve_ray(
            config,
            settings,
            ray_options,
            base_model=base_model,
            registry_url=registry_url,
            token=token,
            device=device,
            max_batch_size=max_batch_size,
            max_resident=max_resident,
            max_cpu_adapters=max_cpu_adapters,
            lora_backend=lora_backend,
            cuda_graphs=not no_cuda_graphs,
            router=not no_router,
        )
        return
    given = [name for name, value in ray_options.items() if value is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)}: options of --ray")

    from ..server.backends import Backend

    backend: Backend
    from loraroute.registry import open_registry

    registry = open_registry(registry_url, token=token, settings=settings)
    if engine_url:
        from ..server.proxy import ProxyBackend

        try:
            backend = ProxyBackend(
                engine_url,
                registry=registry,
                api_key=engine_api_key,
                base_model=engine_base_model,
                concurrency=max_concurrency or 64,
                timeout=request_timeout + 30,
                adapter_dir=engine_adapter_dir,
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--engine-url") from exc
        if preload:
            raise click.UsageError("--preload needs the in-process engine, not --engine-url")
        engine_only = {
            "--max-cpu-adapters": max_cpu_adapters is not None,
            "--lora-backend": lora_backend != "auto",
            "--no-cuda-graphs": no_cuda_graphs,
            "--kv-cache": kv_cache != "auto",
            "--kv-cache-tokens": kv_cache_tokens is not None,
            "--adapter-weights": adapter_weights != "model",
        }
        given = [name for name, on in engine_only.items() if on]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: the in-process engine's options; the engine at "
                f"--engine-url has its own settings"
            )
    else:
        if engine_adapter_dir:
            raise click.UsageError("--engine-adapter-dir goes with --engine-url")
        from ..errors import AgentError
        from ..runtime import Engine, EngineConfig
        from ..server.backends import LocalBackend

        if lora_backend == "triton" or adapter_weights == "int8":  # before loading the model
            import torch

            from ..lora import resolve_backend

            try:
                resolved = resolve_backend(
                    lora_backend,
                    torch.device(device or settings.torch_device()),
                    interpret=settings.triton_interpret,
                )
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--lora-backend") from exc
            if adapter_weights == "int8" and resolved != "triton":
                raise click.BadParameter(
                    "int8 adapter weights are read by the Triton LoRA kernels only (CUDA with "
                    f"triton installed, or TRITON_INTERPRET=1); the LoRA backend here is "
                    f"{resolved!r}",
                    param_hint="--adapter-weights",
                )
        click.echo(f"loading base model {base_model or settings.base_model} ...", err=True)
        engine_config = EngineConfig(
            device=device,
            max_resident=max_resident,
            max_batch_size=max_batch_size,
            max_cpu_adapters=max_cpu_adapters,
            lora_backend=lora_backend,  # type: ignore[arg-type]
            cuda_graphs=not no_cuda_graphs,
            kv_cache=kv_cache,  # type: ignore[arg-type]
            kv_cache_tokens=kv_cache_tokens,
            adapter_weights=adapter_weights,  # type: ignore[arg-type]
        )
        engine = Engine(base_model, registry=registry, settings=settings, config=engine_config)
        try:
            for ref in preload:
                engine.load_adapter(ref)
        except (AgentError, KeyError, ValueError) as exc:
            engine.close()
            raise click.ClickException(f"cannot preload: {exc}") from exc
        backend = LocalBackend(
            engine, own_engine=True, adapter_roots=[*adapter_roots, *settings.adapter_roots]
        )
    app = create_app(backend, config=config, open_router=not no_router)
    auth = f"{len(config.api_keys)} API key(s)" if config.api_keys else "no API key"
    click.echo(f"serving on http://{host}:{port}/v1 ({auth}); Ctrl-C to stop", err=True)
    serve(app, config, log_level=log_level)


def register(group: click.Group) -> None:
    group.add_command(serve_cmd)
