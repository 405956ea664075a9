"""The OpenAI-compatible server (``adapters serve``), laid out as vLLM lays out its own.

- :mod:`.app`: :func:`create_app`, the app factory;
- :mod:`.chat`, :mod:`.completions`, :mod:`.models`, :mod:`.adapters`, :mod:`.probes`: one
  router module a resource;
- :mod:`.protocol`: the request and response models; :mod:`.params`: every request
  parameter honoured or refused, and what a backend generates (:class:`.params.Prepared`);
- :mod:`.serving`: what every generation endpoint does (validate, admit, route, start);
- :mod:`.backends`: where generation happens (:class:`LocalBackend` on an engine here);
- :mod:`.proxy`: :class:`ProxyBackend`, forwarding to another OpenAI-compatible engine;
- :mod:`.rayserve`: the same app on Ray Serve, engine replicas with adapter affinity (Ray is
  imported only when it is used: ``pip install 'loraroute[ray]'``);
- :mod:`.streaming`: one admitted request's choices, server-sent events, timeouts, disconnects;
- :mod:`.logs`: request ids and the request log (text or JSON lines);
- :mod:`.state`, :mod:`.auth`, :mod:`.errors`, :mod:`.metrics` (vLLM's names and ours),
  :mod:`.config`, :mod:`.runner` (uvicorn), :mod:`.testing` (a real server for tests).
"""

from __future__ import annotations

from .app import create_app
from .backends import Backend, LocalBackend
from .config import ServerConfig, is_loopback
from .runner import BackgroundServer, serve

__all__ = [
    "Backend",
    "BackgroundServer",
    "LocalBackend",
    "ServerConfig",
    "create_app",
    "is_loopback",
    "serve",
]
