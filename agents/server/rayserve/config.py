"""What a Ray Serve deployment of loraroute is made of (:class:`RayServeArgs`), one object for
``adapters serve --ray`` and for a Serve config file's ``args``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ..config import ServerConfig


class Autoscaling(BaseModel):
    """Ray Serve's autoscaling of the engine replicas (its ``autoscaling_config``).

    Serve adds a replica when the ongoing requests per replica stay above
    ``target_ongoing_requests`` for ``upscale_delay_s``, and removes one when they stay below
    it for ``downscale_delay_s``.
    """

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float | None = Field(
        None,
        gt=0,
        description="requests per replica Serve aims for (default: 70% of max_ongoing_requests)",
    )
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling min_replicas ({self.min_replicas}) is above max_replicas "
                f"({self.max_replicas}); lower min_replicas or raise max_replicas"
            )
        return self

    def ray_config(self, max_ongoing: int) -> dict[str, Any]:
        config = self.model_dump(exclude_none=True)
        config.setdefault("target_ongoing_requests", max(1.0, 0.7 * max_ongoing))
        return config


class RayServeArgs(BaseModel):
    """The Ray Serve application: one ingress (the OpenAI-compatible server and the router)
    in front of engine replicas (the base model and an adapter pool each).

    Engine replicas serve adapters through Ray Serve's model multiplexing: the adapter
    version's digest is the multiplexed model id and ``max_resident`` (the replica's pool) is
    its ``max_num_models_per_replica``, so Serve sends a request to a replica that holds its
    adapter when one does. ``affinity=False`` drops the multiplexed id (Serve's plain
    power-of-two-choices routing; the benchmark's baseline).

    Example::

        >>> RayServeArgs(num_replicas=2, max_resident=8).engine_options()["num_replicas"]
        2
    """

    model_config = ConfigDict(extra="forbid")

    # -- what each engine replica loads (default: the replica's own settings) -----------------
    base_model: str | None = None
    registry: str | None = Field(
        None, description="registry URL the replicas and the ingress open (default: settings)"
    )
    registry_token: SecretStr | None = None
    home: str | None = Field(
        None, description="LORAROUTE_HOME of the replicas (default: their environment's)"
    )
    device: str | None = None
    max_resident: int = Field(16, ge=1, description="adapter slots a replica holds")
    max_batch_size: int = Field(8, ge=1)
    max_cpu_adapters: int | None = Field(None, ge=0)
    lora_backend: Literal["auto", "triton", "torch"] = "auto"
    cuda_graphs: bool = True

    # -- how many replicas, and their resources -----------------------------------------------
    num_replicas: int = Field(1, ge=1, description="engine replicas (without autoscaling)")
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description="requests Serve sends one replica at once (default: max_batch_size; past "
        "it a request goes to another replica, which loads the adapter: the placement "
        "simulation finds more waits in queues than loads saved)",
    )
    cpus_per_replica: float = Field(1.0, ge=0)
    gpus_per_replica: float | None = Field(
        None, ge=0, description="GPUs per engine replica (default: 1 on a cuda device, else 0)"
    )
    ingress_replicas: int = Field(1, ge=1)

    # -- the ingress ----------------------------------------------------------------------------
    affinity: bool = True
    retries: int = Field(3, ge=0, description="times a request is sent again when its replica dies")
    router: bool = Field(True, description='open the router for model="auto"')
    server: ServerConfig = Field(default_factory=ServerConfig)

    @model_validator(mode="after")
    def _check(self) -> RayServeArgs:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                "give num_replicas or autoscaling, not both (autoscaling sets the replica "
                "count between min_replicas and max_replicas)"
            )
        return self

    @property
    def ongoing_per_replica(self) -> int:
        return self.max_ongoing_requests or self.max_batch_size

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.num_replicas

    def settings(self) -> Any:
        """The :class:`~loraroute.settings.Settings` a replica or the ingress runs with."""
        from pathlib import Path

        from loraroute.settings import get_settings

        overrides: dict[str, Any] = {}
        if self.home:
            overrides["home"] = Path(self.home)
        if self.base_model:
            overrides["base_model"] = self.base_model
        return get_settings(**overrides)

    def open_registry(self) -> Any:
        from loraroute.registry import open_registry

        token = self.registry_token.get_secret_value() if self.registry_token else None
        return open_registry(self.registry, token=token, settings=self.settings())

    def engine_config(self) -> Any:
        from ...runtime import EngineConfig

        return EngineConfig(
            device=self.device,
            max_resident=self.max_resident,
            max_batch_size=self.max_batch_size,
            max_cpu_adapters=self.max_cpu_adapters,
            lora_backend=self.lora_backend,
            cuda_graphs=self.cuda_graphs,
        )

    def engine_options(self) -> dict[str, Any]:
        """``Deployment.options(...)`` of the engine replicas."""
        gpus = self.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if (self.device or "").startswith("cuda") else 0.0
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": gpus},
            "max_ongoing_requests": self.ongoing_per_replica,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.ray_config(self.ongoing_per_replica)
        else:
            options["num_replicas"] = self.num_replicas
        return options

    def ingress_options(self) -> dict[str, Any]:
        """``Deployment.options(...)`` of the ingress: no CPU reserved (it routes and waits),
        and room for every request the server admits."""
        admitted = self.max_replicas * self.ongoing_per_replica + self.server.max_queue
        return {
            "num_replicas": self.ingress_replicas,
            "ray_actor_options": {"num_cpus": 0},
            "max_ongoing_requests": admitted + 64,
        }
