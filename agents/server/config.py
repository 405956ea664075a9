"""The server's settings (:class:`ServerConfig`), one object for the app and its CLI."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, model_validator


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerConfig(BaseModel):
    """Settings of ``adapters serve`` (each has a CLI option; most an environment variable).

    API keys are off by default on loopback and required when ``host`` is anything else,
    unless ``insecure_no_auth`` says otherwise.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list)
    insecure_no_auth: bool = False
    cors_origins: list[str] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    max_queue: int = Field(default=64, ge=0, description="Admitted requests beyond the batch")
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Requests generating at once (default: the batch size)"
    )
    request_timeout: float = Field(default=300.0, gt=0)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    default_max_tokens: int = Field(default=512, ge=1)
    max_tokens_limit: int | None = Field(
        default=None, ge=1, description="Largest max_tokens accepted (default: the context size)"
    )
    allow_adapter_loading: bool = True
    decision_log: bool = Field(
        default=True, description="Record model=auto decisions in the registry's database"
    )
    decision_log_text: bool = Field(default=False, description="Record the request's text too")
    decision_log_max_rows: int = Field(default=100_000, ge=1)
    drift_interval: float = Field(
        default=60.0, ge=0, description="Seconds between drift figures on /metrics (0: none)"
    )

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        self.api_keys = [k.strip() for k in self.api_keys if k and k.strip()]
        if not self.api_keys and not self.insecure_no_auth and not is_loopback(self.host):
            raise ValueError(
                f"binding {self.host!r} exposes the server beyond this machine, so API keys are "
                f"required: pass --api-key KEY (or LORAROUTE_API_KEYS=k1,k2), bind 127.0.0.1, "
                f"or accept the risk with --insecure-no-auth"
            )
        return self
