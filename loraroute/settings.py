"""One place for every setting a person may change.

Each field has a default that works offline on a fresh machine and an environment
variable (``LORAROUTE_<FIELD>``) that overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def _env(name: str, default: str) -> str:
    value = os.environ.get(f"LORAROUTE_{name.upper()}")
    return value if value not in (None, "") else default


def default_home() -> Path:
    return Path(platformdirs.user_cache_dir("loraroute"))


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build with :func:`get_settings` to honour the environment.

    Example::

        >>> s = Settings(home=Path("/tmp/lr"))
        >>> s.blob_dir
        PosixPath('/tmp/lr/registry/blobs')
    """

    home: Path = field(default_factory=default_home)
    base_model: str = DEFAULT_BASE_MODEL
    embedder: str = DEFAULT_EMBEDDER
    registry: str = (
        ""  # "" -> SQLite under home; a sqlite:// or postgresql:// URL; or http(s):// remote
    )
    device: str = "auto"
    # a JSON trust policy (trusted public keys / certificate identities); "" -> no policy:
    # signatures are then reported but not required (see loraroute.registry.signing)
    trust_policy: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")

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


ENV_VARS = {f.name: f"LORAROUTE_{f.name.upper()}" for f in fields(Settings)}


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit ``overrides`` (``None`` values ignored)."""
    values: dict[str, object] = {
        "home": Path(_env("home", str(default_home()))),
        "base_model": _env("base_model", DEFAULT_BASE_MODEL),
        "embedder": _env("embedder", DEFAULT_EMBEDDER),
        "registry": _env("registry", ""),
        "device": _env("device", "auto"),
        "trust_policy": _env("trust_policy", ""),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]
