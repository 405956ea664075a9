"""SQL tables (SQLModel tutorial shape) and the public :class:`AdapterVersion` model.

A change here needs a migration in ``migrations/versions`` (tests/registry/test_migrations.py
compares the migrated schema with these tables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class FileInfo:
    """One file of a version: its path inside the adapter folder, sha256 digest and size."""

    path: str
    digest: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size}


class AdapterBase(SQLModel):
    name: str = Field(index=True, unique=True, max_length=128)


class Adapter(AdapterBase, table=True):
    __tablename__ = "lr_adapter"
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)


class VersionBase(SQLModel):
    """Metadata a version records; everything but the files and the numbers."""

    base_model_id: str | None = None
    base_fingerprint: str | None = Field(default=None, index=True)
    peft_type: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    dtype: str | None = None
    size: int = 0
    domain: str | None = Field(default=None, index=True)
    description: str | None = None
    routing_examples: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    tags: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    metrics: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON))
    parent: str | None = None
    data_digest: str | None = None
    training_config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    author: str | None = None
    license: str | None = None


class Version(VersionBase, table=True):
    __tablename__ = "lr_version"
    __table_args__ = (
        UniqueConstraint("adapter_id", "number", name="uq_lr_version_number"),
        UniqueConstraint("adapter_id", "digest", name="uq_lr_version_digest"),
    )
    id: int | None = Field(default=None, primary_key=True)
    adapter_id: int = Field(foreign_key="lr_adapter.id", index=True)
    number: int
    digest: str = Field(index=True)
    # the manifest's file list, kept with the row so that listing needs one query
    files_json: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    # the public AdapterVersion as JSON (without aliases): listing decodes one string per row
    doc: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow)


class Alias(SQLModel, table=True):
    __tablename__ = "lr_alias"
    __table_args__ = (UniqueConstraint("adapter_id", "name", name="uq_lr_alias"),)
    id: int | None = Field(default=None, primary_key=True)
    adapter_id: int = Field(foreign_key="lr_adapter.id", index=True)
    name: str = Field(max_length=128)
    version_id: int = Field(foreign_key="lr_version.id", index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class Blob(SQLModel, table=True):
    __tablename__ = "lr_blob"
    digest: str = Field(primary_key=True)
    size: int
    created_at: datetime = Field(default_factory=utcnow)


class FileEntry(SQLModel, table=True):
    __tablename__ = "lr_file"
    __table_args__ = (
        UniqueConstraint("version_id", "path", name="uq_lr_file_path"),
        Index("ix_lr_file_blob", "blob_digest"),
    )
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="lr_version.id", index=True)
    path: str
    blob_digest: str = Field(foreign_key="lr_blob.digest")
    size: int


class VersionSignature(SQLModel, table=True):
    """A model-signing bundle over a version's files (a version may carry several)."""

    __tablename__ = "lr_signature"
    __table_args__ = (UniqueConstraint("version_id", "digest", name="uq_lr_signature"),)
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="lr_version.id", index=True)
    digest: str  # sha256 of the bundle text
    kind: str  # key | certificate
    signer: str  # "key:<hint>" or "cert:<identity>", as parsed when attached
    bundle: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Token(SQLModel, table=True):
    """A bearer token of the HTTP server; only its sha256 is stored."""

    __tablename__ = "lr_token"
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    token_hash: str = Field(unique=True, index=True)
    scope: str  # read | write | admin
    created_at: datetime = Field(default_factory=utcnow)


class TokenState(SQLModel, table=True):
    """Lifecycle of a token: adapter-name prefix, expiry, revocation, last use.

    Its own table (one row per token, absent for tokens made before it existed; migration
    0002 adds it to registries of the release before).
    """

    __tablename__ = "lr_token_state"
    token_id: int = Field(foreign_key="lr_token.id", primary_key=True)
    name_prefix: str | None = Field(default=None, max_length=128)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class Tombstone(SQLModel, table=True):
    """A removed version: its number is never given out again, even after the adapter's last
    version is gone (so the row holds the adapter's name, not its id)."""

    __tablename__ = "lr_tombstone"
    __table_args__ = (UniqueConstraint("name", "number", name="uq_lr_tombstone"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=128)
    number: int
    digest: str
    removed_at: datetime = Field(default_factory=utcnow)


class EvalRecord(SQLModel, table=True):
    """One eval result of a version: a metric on a dataset named by the sha256 of its data
    (so results compare only on the same data), with its confidence interval and size.
    Migration 0004 adds it."""

    __tablename__ = "lr_eval"
    __table_args__ = (Index("ix_lr_eval_key", "dataset_digest", "metric"),)
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="lr_version.id", index=True)
    dataset: str = Field(max_length=256)
    dataset_digest: str = Field(max_length=71)
    metric: str = Field(max_length=128)
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    higher_is_better: bool = True
    source: str | None = Field(default=None, max_length=256)  # what produced it
    actor: str | None = Field(default=None, max_length=256)  # who recorded it (a token)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class Promotion(SQLModel, table=True):
    """A move of the serving alias and the quality gate's verdict on it (forced overrides
    included): the audit trail of what went live. Kept by name and number, like tombstones,
    so it outlives removed versions. Migration 0004 adds it."""

    __tablename__ = "lr_promotion"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=128)
    alias: str = Field(max_length=128)
    from_number: int | None = None
    to_number: int
    verdict: str = Field(max_length=32)
    forced: bool = False
    tolerance: float
    report: str = Field(sa_column=Column(Text, nullable=False))  # the gate's report, JSON
    actor: str | None = Field(default=None, max_length=256)
    created_at: datetime = Field(default_factory=utcnow)


class RegistryConfig(SQLModel, table=True):
    """Facts about the registry itself, by key; ``blob_store``: the object store its blobs are
    in (``s3://bucket/prefix/``), so that every client uses the same one."""

    __tablename__ = "lr_config"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))


class RouteDecisionRow(SQLModel, table=True):
    """One routing decision of a server (``model="auto"``), for drift reports.

    ``adapter`` is the version that answered (``legal@3``; NULL: the base model, a fallback),
    ``best`` the best-scoring route even when the router fell back, ``margin`` the score's
    lead over the runner-up, ``embedding`` the request's unit vector as little-endian float32
    bytes from ``encoder``, ``text`` the request only when the operator opted in. The table is
    bounded: :mod:`loraroute.registry.decisions` prunes the oldest rows in batches.
    """

    __tablename__ = "lr_route_decision"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    adapter: str | None = Field(default=None, max_length=200)
    best: str | None = Field(default=None, max_length=128)
    reason: str = Field(default="", max_length=32)
    score: float = 0.0
    margin: float | None = None
    confidence: float | None = None
    encoder: str | None = Field(default=None, max_length=200)
    embedding: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class State(SQLModel, table=True):
    """One row whose counter changes on every write: ``Registry.revision()``."""

    __tablename__ = "lr_state"
    id: int = Field(default=1, primary_key=True)
    revision: int = 0


TABLES = [
    t.__table__  # type: ignore[union-attr]
    for t in (
        Adapter,
        Version,
        Alias,
        Blob,
        FileEntry,
        VersionSignature,
        Token,
        TokenState,
        Tombstone,
        RegistryConfig,
        RouteDecisionRow,
        State,
        EvalRecord,
        Promotion,
    )
]


@dataclass(slots=True)
class AdapterVersion:
    """One immutable adapter version, as every registry (local or remote) returns it.

    A plain dataclass (not a validated model) so that listing 10,000 versions stays fast.

    Example::

        >>> v = reg.resolve("legal:prod")  # doctest: +SKIP
        >>> v.ref, v.digest[:15]  # doctest: +SKIP
        ('legal@3', 'sha256:9f3c1a2b')
    """

    name: str
    version: int
    digest: str
    created_at: datetime
    base_model_id: str | None = None
    base_fingerprint: str | None = None
    peft_type: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    dtype: str | None = None
    size: int = 0
    domain: str | None = None
    description: str | None = None
    routing_examples: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    parent: str | None = None
    data_digest: str | None = None
    training_config: dict[str, Any] = field(default_factory=dict)
    author: str | None = None
    license: str | None = None
    aliases: list[str] = field(default_factory=list)
    files: list[FileInfo] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def digest_ref(self) -> str:
        return f"{self.name}@{self.digest}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``created_at`` as ISO 8601, files as dicts)."""
        d = {f: getattr(self, f) for f in _FIELDS}
        d["created_at"] = self.created_at.isoformat()
        d["files"] = [f.to_dict() for f in self.files]
        return d

    def to_doc(self) -> str:
        """Compact JSON array in field order (aliases left empty), as stored for listing.

        New fields must be appended at the end of the class, with defaults, so that stored
        documents keep decoding positionally.
        """
        values = [getattr(self, f) for f in _FIELDS]
        values[_CREATED] = self.created_at.isoformat()
        values[_ALIASES] = []
        values[_FILES] = [[f.path, f.digest, f.size] for f in self.files]
        return json.dumps(values, separators=(",", ":"))

    @classmethod
    def from_doc_values(cls, values: list[Any]) -> AdapterVersion:
        """Inverse of :meth:`to_doc` after JSON decoding (the hot path of listing)."""
        values[_CREATED] = datetime.fromisoformat(values[_CREATED])
        values[_FILES] = [FileInfo(*f) for f in values[_FILES]]
        return cls(*values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterVersion:
        d = {k: data[k] for k in _FIELDS if k in data}
        created = d["created_at"]
        if isinstance(created, str):
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        if created.tzinfo is None:  # stored in UTC
            created = created.replace(tzinfo=timezone.utc)
        d["created_at"] = created
        d["files"] = [f if isinstance(f, FileInfo) else FileInfo(**f) for f in d.get("files") or []]
        return cls(**d)


_FIELDS = tuple(f.name for f in fields(AdapterVersion))
_CREATED, _ALIASES, _FILES, _TAGS = (
    _FIELDS.index(k) for k in ("created_at", "aliases", "files", "tags")
)


__all__ = [
    "Adapter",
    "AdapterBase",
    "AdapterVersion",
    "Alias",
    "Blob",
    "EvalRecord",
    "FileEntry",
    "FileInfo",
    "Promotion",
    "RegistryConfig",
    "RouteDecisionRow",
    "State",
    "TABLES",
    "Token",
    "TokenState",
    "Tombstone",
    "Version",
    "VersionBase",
    "VersionSignature",
]
