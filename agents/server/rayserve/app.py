"""The Ray Serve application: :func:`build_app` for ``serve run`` and Serve config files, and
:func:`run` for ``adapters serve --ray``.

Two deployments: ``LoraRouteIngress`` (the same FastAPI app as ``adapters serve``, over a
:class:`~.backend.RayBackend`; it routes ``model="auto"`` with the router, live on the registry)
and ``LoraRouteEngine`` (the engine replicas, :class:`~.replica.EngineReplica`).

Example (a Serve config file; ``serve run loraroute.yaml``)::

    applications:
      - name: loraroute
        route_prefix: /
        import_path: loraroute.agents.server.rayserve:build_app
        args: {num_replicas: 2, max_resident: 16, registry: "postgresql://..."}
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .backend import RayBackend
from .config import RayServeArgs

logger = logging.getLogger(__name__)

APP_NAME = "loraroute"
INGRESS = "LoraRouteIngress"
ENGINE = "LoraRouteEngine"


def require_ray() -> Any:
    """``ray.serve``, or an ImportError that says which extra to install."""
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError(
            "the Ray Serve deployment needs Ray Serve, which is not installed: "
            "pip install 'loraroute[ray]'"
        ) from exc
    return serve


class Ingress:
    """The OpenAI-compatible server in a Serve replica, generating on the engine replicas.

    Wrapped by ``serve.ingress()`` in :func:`build_app`; Serve calls
    ``__serve_build_asgi_app__`` after the constructor.
    """

    def __init__(self, engine: Any, args: RayServeArgs):
        self.args = args
        self.backend = RayBackend(engine, args)

    def __serve_build_asgi_app__(self) -> Any:
        from ..app import create_app

        return create_app(self.backend, config=self.args.server, open_router=self.args.router)


def build_app(args: RayServeArgs | dict[str, Any] | None = None) -> Any:
    """The Serve application (``serve.run(build_app({...}))``, or ``import_path`` in a Serve
    config file whose ``args`` are :class:`RayServeArgs` fields)."""
    serve = require_ray()
    from .replica import EngineReplica

    args = RayServeArgs.model_validate(args or {})
    engine = (
        serve.deployment(EngineReplica, name=ENGINE).options(**args.engine_options()).bind(args)
    )
    ingress = serve.deployment(serve.ingress()(Ingress), name=INGRESS)
    return ingress.options(**args.ingress_options()).bind(engine, args)


def run(
    args: RayServeArgs,
    *,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    blocking: bool = True,
) -> Any:
    """Start (or join, with ``address``) a Ray cluster, start Serve's HTTP proxy on
    ``host:port`` and run the application: until interrupted when ``blocking`` (then the
    application is deleted), else return the ingress's handle at once."""
    serve = require_ray()
    import ray

    if not ray.is_initialized():
        # a local cluster started here: no dashboard (and so no usage reports from it)
        ray.init(address=address or None, include_dashboard=False if not address else None)
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    if not blocking:
        return handle
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("interrupted: deleting the application %s", APP_NAME)
    finally:  # take the application down, as ``serve run`` does
        serve.delete(APP_NAME)
    return None
