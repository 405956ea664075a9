"""``adapters serve --ray``: the same server as a Ray Serve application (see
:mod:`loraroute.agents.server.rayserve`)."""

from __future__ import annotations

from typing import Any

import click


def serve_ray(
    config: Any,
    settings: Any,
    ray_options: dict[str, Any],
    *,
    base_model: str | None,
    registry_url: str | None,
    token: str | None,
    device: str | None,
    max_batch_size: int,
    max_resident: int,
    max_cpu_adapters: int | None,
    lora_backend: str,
    cuda_graphs: bool,
    router: bool,
) -> None:
    """Build :class:`RayServeArgs` from the command line and run until interrupted."""
    from pydantic import ValidationError

    from ..server.rayserve import Autoscaling, RayServeArgs, require_ray, run

    try:
        require_ray()
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc
    autoscale = any(
        ray_options[k] is not None
        for k in ("--min-replicas", "--max-replicas", "--target-ongoing-requests")
    )
    if autoscale and ray_options["--replicas"] is not None:
        raise click.UsageError(
            "--replicas sets a fixed count; --min-replicas/--max-replicas/"
            "--target-ongoing-requests autoscale: give one or the other"
        )
    if token is None and settings.registry_token is not None:
        token = settings.registry_token.get_secret_value()
    fields: dict[str, Any] = {
        "base_model": base_model or settings.base_model,
        # what this command resolved, so replicas on this machine open the same registry and
        # models; on other nodes the registry must be reachable (PostgreSQL or HTTP)
        "registry": registry_url or settings.registry_url,
        "registry_token": token,
        "home": str(settings.home),
        "device": device,
        "max_resident": max_resident,
        "max_batch_size": max_batch_size,
        "max_cpu_adapters": max_cpu_adapters,
        "lora_backend": lora_backend,
        "cuda_graphs": cuda_graphs,
        "router": router,
        "server": config,
    }
    optional = {
        "num_replicas": ray_options["--replicas"],
        "max_ongoing_requests": ray_options["--max-ongoing-requests"],
        "cpus_per_replica": ray_options["--cpus-per-replica"],
        "gpus_per_replica": ray_options["--gpus-per-replica"],
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    try:
        if autoscale:
            scaling = {
                "min_replicas": ray_options["--min-replicas"],
                "max_replicas": ray_options["--max-replicas"],
                "target_ongoing_requests": ray_options["--target-ongoing-requests"],
            }
            fields["autoscaling"] = Autoscaling(
                **{k: v for k, v in scaling.items() if v is not None}
            )
        args = RayServeArgs(**fields)
    except ValidationError as exc:
        raise click.UsageError("; ".join(e["msg"] for e in exc.errors())) from exc
    address = ray_options["--ray-address"] or settings.ray_address or None
    where = f"the Ray cluster at {address}" if address else "Ray (RAY_ADDRESS or a local cluster)"
    click.echo(
        f"starting on {where}: {args.max_replicas} engine replica(s) of {args.base_model}; "
        f"serving on http://{config.host}:{config.port}/v1; Ctrl-C to stop",
        err=True,
    )
    run(args, address=address, host=config.host, port=config.port)
