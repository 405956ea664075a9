"""Running the app with uvicorn: in the foreground (:func:`serve`) or on a thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from .config import ServerConfig


class BackgroundServer:
    """Serve ``app`` with uvicorn on a daemon thread (tests, benchmarks, notebooks).

    Example::

        >>> with BackgroundServer(app) as srv:  # doctest: +SKIP
        ...     httpx.get(srv.url + "/health")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_kwargs: Any):
        import uvicorn

        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        from loraroute.redact import uvicorn_log_config

        uvicorn_kwargs.setdefault("log_level", "warning")
        uvicorn_kwargs.setdefault("log_config", uvicorn_log_config())
        uvicorn_kwargs.setdefault("lifespan", "on")
        self.server = uvicorn.Server(uvicorn.Config(app, **uvicorn_kwargs))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(app: Any, config: ServerConfig, *, log_level: str = "info") -> None:
    """Run ``app`` in the foreground until interrupted. uvicorn installs no handlers of its
    own (its records reach the root logger, set up by the caller) and writes no access lines:
    the app's request log (:mod:`.logs`) has one line per request, with its id."""
    import uvicorn

    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        log_config=None,
        access_log=False,
    )
