"""Serving across machines with Ray Serve: an ingress that routes, engine replicas that hold
adapters, and Ray Serve's model multiplexing to send each request where its adapter is.

- :mod:`.config`: :class:`RayServeArgs` (the deployment's settings, also a Serve config's args);
- :mod:`.app`: :func:`build_app` (``serve run loraroute.agents.server.rayserve:build_app``),
  :func:`run` (``adapters serve --ray``);
- :mod:`.backend`: :class:`RayBackend`, the server's backend over the engine replicas;
- :mod:`.replica`: :class:`EngineReplica`, one engine and its adapter pool.

Importing this package does not import Ray; building or running the app does
(``pip install 'loraroute[ray]'``).
"""

from __future__ import annotations

from .app import build_app, require_ray, run
from .backend import RayBackend
from .config import Autoscaling, RayServeArgs

__all__ = ["Autoscaling", "RayBackend", "RayServeArgs", "build_app", "require_ray", "run"]
