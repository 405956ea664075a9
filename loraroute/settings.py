"""One place for every setting a person may change, and every environment variable read.

:class:`Settings` is a pydantic-settings model: each field has a default that works offline on a
fresh machine and an environment variable (``LORAROUTE_<FIELD>``, or the third-party name given
as its alias) that overrides it. Nothing reads the environment at import time; code that needs
a setting takes a :class:`Settings` (or calls :func:`get_settings` once, when it is built).
The README's "Settings" table lists the same variables (a test keeps the two in step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import AliasChoices, ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
ENV_PREFIX = "LORAROUTE_"

CommaList = Annotated[list[str], NoDecode]  # "a,b" in the environment -> ["a", "b"]


def default_home() -> Path:
    return Path(platformdirs.user_cache_dir("loraroute"))


class Settings(BaseSettings):
    """Resolved settings: explicit arguments, else the environment, else the defaults.

    Example::

        >>> s = Settings(home=Path("/tmp/lr"))
        >>> s.blob_dir
        PosixPath('/tmp/lr/registry/blobs')
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", populate_by_name=True
    )

    # -- where things live ---------------------------------------------------------------
    home: Path = Field(
        default_factory=default_home,
        description="converted models, fingerprints, SQLite registry, blobs, router state",
    )
    base_model: str = Field(DEFAULT_BASE_MODEL, description="any HF model id or local folder")
    embedder: str = Field(
        DEFAULT_EMBEDDER, description="any sentence-transformers id or folder (the router's)"
    )
    registry: str = Field(
        "",
        description="`sqlite:///...`, `postgresql://...`, or an `http(s)://` registry server "
        "(empty: a SQLite file under home)",
    )
    registry_token: SecretStr | None = Field(None, description="bearer token for an HTTP registry")
    device: str = Field(
        "auto", description="`auto` (CUDA if present), `cpu`, `cuda`, `cuda:N`, `mps`"
    )
    trust_policy: str = Field(
        "",
        description="a JSON trust policy file (trusted public keys / certificate identities); "
        "empty: signatures are reported, not required",
    )
    signing_key_password: SecretStr | None = Field(
        None, description="password of an encrypted key given to `adapters sign --key`"
    )
    serving_alias: str = Field(
        "prod",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description='the alias that makes a version live: the router and `model="auto"` '
        "serve only versions holding it (`adapters alias set NAME ALIAS VERSION` promotes)",
    )
    gate_tolerance: float = Field(
        0.01,
        ge=0,
        allow_inf_nan=False,
        description="the quality gate: promoting to the serving alias is refused when an eval "
        "metric drops by more than this (absolute) against the version holding it, on the same "
        "dataset digest (`--force` overrides, and is recorded)",
    )
    gate_require_evals: bool = Field(
        False,
        description="refuse a promotion to the serving alias when the candidate and the "
        "version holding it share no eval result (dataset digest and metric) to compare; "
        "off: allowed with a warning",
    )

    # -- where the registry's blobs live (loraroute.registry.blobs) ----------------------
    blob_store: str = Field(
        "",
        description="`s3://bucket/prefix` (an S3-compatible object store, `pip install "
        "'loraroute[s3]'`), a folder, or empty: the folder `blobs` beside a SQLite registry "
        "(`<home>/registry/blobs` for PostgreSQL)",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3 API endpoint of an S3-compatible store (MinIO, Ceph, R2; path-style "
        "addressing); none: AWS",
    )
    s3_region: str | None = Field(None, description="the bucket's region (none: boto3's default)")
    s3_access_key_id: SecretStr | None = Field(
        None, description="access key id (none: boto3's chain: `AWS_*` variables, ~/.aws, roles)"
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="secret access key")
    s3_session_token: SecretStr | None = Field(
        None, description="session token of temporary credentials"
    )
    s3_part_size: ByteSize = Field(
        ByteSize(8 << 20),
        ge=5 << 20,
        description="part size of multipart uploads (at least 5MiB); smaller blobs take one "
        "request",
    )

    # -- the registry's size limits (loraroute.registry.limits.Limits) -------------------
    registry_max_blob_bytes: ByteSize = Field(
        ByteSize(4 << 30), ge=0, description="largest file of an adapter (`4GiB`, `512MiB`, bytes)"
    )
    registry_max_request_bytes: ByteSize = Field(
        ByteSize(32 << 20), ge=0, description="largest HTTP request body other than a blob"
    )
    registry_max_manifest_files: int = Field(1000, ge=0, description="most files in one version")
    registry_max_manifest_bytes: ByteSize = Field(
        ByteSize(1 << 20), ge=0, description="largest file list of one version, as JSON"
    )
    registry_max_routing_examples: int = Field(
        10_000, ge=0, description="most routing examples of one version"
    )
    registry_max_routing_example_chars: int = Field(
        4096, ge=0, description="longest routing example, in characters"
    )
    registry_max_model_card_bytes: ByteSize = Field(
        ByteSize(1 << 20), ge=0, description="largest model card (README.md)"
    )
    registry_max_metadata_bytes: ByteSize = Field(
        ByteSize(1 << 20), ge=0, description="largest metadata of one version, as JSON"
    )
    registry_max_response_bytes: ByteSize = Field(
        ByteSize(256 << 20), ge=0, description="largest JSON answer a client reads from a registry"
    )

    # -- adapters serve ------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address `adapters serve` binds")
    api_keys: CommaList = Field(
        default_factory=list,
        description="comma-separated bearer keys `adapters serve` accepts (required off loopback)",
    )
    cors_origins: CommaList = Field(
        default_factory=list, description="comma-separated origins allowed by CORS"
    )
    engine_url: str | None = Field(
        None, description="forward generation to this OpenAI-compatible engine"
    )
    engine_api_key: SecretStr | None = Field(None, description="bearer key for `engine_url`")
    adapter_roots: CommaList = Field(
        default_factory=list,
        description="comma-separated folders under which `/v1/load_lora_adapter` may read "
        "adapter folders (besides the registry's checkouts and registry refs)",
    )
    ray_address: str = Field(
        "",
        description="the Ray cluster `adapters serve --ray` joins (`auto`, `ray://host:10001`; "
        "empty: Ray's own default, `RAY_ADDRESS` or a new local cluster)",
    )
    log_json: bool = Field(
        False,
        description="`adapters serve` logs JSON lines (one per request: id, model asked, "
        "adapter, route score, tokens, latency, status) instead of text",
    )

    decision_log: bool = Field(
        True,
        description="`adapters serve` records each `model=auto` routing decision (time, adapter "
        "or fallback, score, margin, the request's embedding) in the registry's database, for "
        "`adapters drift` (a SQLite or PostgreSQL registry; not through an HTTP registry)",
    )
    decision_log_text: bool = Field(
        False, description="also record the request's text with each routing decision"
    )
    decision_log_max_rows: int = Field(
        100_000, ge=1, description="most routing decisions kept; the oldest are pruned in batches"
    )
    drift_interval: float = Field(
        60.0,
        ge=0,
        description="seconds between the server's drift figures on `/metrics` (the newest 500 "
        "decisions against the 5,000 before them; 0: none)",
    )

    # -- the LoRA kernels on CUDA (see loraroute.agents.lora.config) -----------------------
    lora_decode_kernel: Literal["auto", "tiles", "rows"] = Field(
        "auto",
        description="graphed CUDA decode steps: `tiles` (16 tokens of one adapter), `rows` (one "
        "row a program), or `auto` (rows once half the tile places would be padding)",
    )
    lora_side_priority: int = Field(
        -100,
        description="priority of the CUDA stream the graphed decode LoRA runs on (below 0: "
        "ahead of the GEMM's blocks; torch clamps to the device's range; `0`: the default)",
    )
    lora_overlap: bool = Field(
        True, description="run the graphed decode LoRA on a side stream beside the base GEMM"
    )
    lora_gemm_first: bool = Field(
        False, description="launch the base GEMM before the side stream's LoRA kernels"
    )
    lora_expand_adds: bool = Field(
        False, description="the decode expand adds onto the GEMM's product (no delta buffer)"
    )
    lora_fused_adds: bool = Field(
        True,
        description="paged graphed decode: the LoRA delta is added inside the fused op that "
        "reads the GEMM's product next (norm, rotary, activation), not by an add of its own",
    )
    lora_gemm_sm_carveout: int = Field(
        8,
        ge=0,
        description="graphed CUDA decode: SMs the base GEMM leaves to the LoRA kernels beside "
        "it (cuBLASLt's SM count target; `0`: the GEMM takes them all; 8 was best of 0-32 on "
        "an H100's 132)",
    )
    lora_l2_prefetch: int = Field(
        0,
        ge=0,
        description="graphed CUDA decode: KiB of each batch adapter's slot past a LoRA group "
        "that the group hints into L2 for the groups after it (at least the next group "
        "whole; `0`: no hints; measured slower with 32 distinct adapters on an H200)",
    )
    lora_l2_evict_last: bool = Field(
        True, description="the L2 hints of `LORAROUTE_LORA_L2_PREFETCH` at evict-last priority"
    )
    lora_l2_prefetch_at: Literal["each", "attention"] = Field(
        "each",
        description="where the L2 hints of `LORAROUTE_LORA_L2_PREFETCH` run: `each` group, "
        "beside its GEMM, or only after the q/k/v GEMM, beside attention (`attention`); "
        "neither measured faster with 32 distinct adapters",
    )
    triton_fast_launch: bool = Field(
        True, description="call compiled Triton kernels directly instead of `kernel[grid]`"
    )
    triton_k_per_split: int = Field(
        1024, ge=0, description="inputs per split-K slice of the eager LoRA kernel (0: no split)"
    )

    # -- variables of other tools that loraroute reads -----------------------------------
    triton_interpret: bool = Field(
        False,
        validation_alias=AliasChoices("TRITON_INTERPRET", "triton_interpret"),
        description="Triton's own: run kernels in its CPU interpreter (tests)",
    )
    omp_num_threads: int | None = Field(
        None,
        validation_alias=AliasChoices("OMP_NUM_THREADS", "omp_num_threads"),
        description="OpenMP's own: when set, training leaves torch's thread count alone",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return Path(value).expanduser().absolute()

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
            raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return value

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def cache_dir(self) -> Path:
        """Converted models and fingerprints."""
        return self.home / "models"

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def blob_dir(self) -> Path:
        return self.registry_dir / "blobs"

    @property
    def registry_url(self) -> str:
        """Where the registry lives: the explicit setting, else a SQLite file under home."""
        if self.registry:
            return self.registry
        return f"sqlite:///{self.registry_dir / 'registry.db'}"

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        if torch.cuda.is_available():
            return "cuda"
        return "cpu"


def env_var(name: str) -> str:
    """The environment variable of setting ``name``."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + name.upper()


ENV_VARS = {name: env_var(name) for name in Settings.model_fields}


def library_default(name: str, value: str) -> None:
    """Set a third-party library's environment switch (``TOKENIZERS_PARALLELISM``, ...) unless
    the user has set it, so that loraroute touches the environment only here."""
    os.environ.setdefault(name, value)


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit ``overrides`` (``None`` values ignored)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
