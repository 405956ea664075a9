"""The registry proper: SQL metadata (SQLite or PostgreSQL) over a content-addressed blob
store (a folder or an S3-compatible bucket, :mod:`loraroute.registry.blobs`).

A push validates the folder, stores each file as a blob (temp file, fsync, rename), and only
then records the version in one SQL transaction; so a killed push leaves at most unreferenced
blobs (removed by :meth:`Registry.gc`), never a visible partial version.

Example::

    >>> reg = open_registry("sqlite:////tmp/reg/registry.db")  # doctest: +SKIP
    >>> v = reg.push("out/legal", "legal", domain="law")  # doctest: +SKIP
    >>> reg.alias_set("legal", "prod", v.version)  # doctest: +SKIP
    >>> reg.local_path("legal:prod")  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import gc
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import exc, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, delete, select

from loraroute.redact import redact_url
from loraroute.settings import Settings, get_settings

from ._checkout import cached_checkout, new_checkout_check
from ._db import bump_revision, make_engines, sqlite_path
from ._evals_store import gate_promotion
from ._local_evals import EvalMethods, alias_target
from ._local_signing import SignatureMethods
from ._location import pin_blob_store
from ._manifest import manifest_digest
from ._meta import (
    META_KEYS,
    bind_signatures,
    check_meta,
    complete_meta,
    folder_files,
    metrics_of,
    read_signature_file,
)
from ._suggest import close_matches, missing_adapter, missing_version
from ._text import check_text
from ._transfer import materialize
from .blobs import BlobStore, LocalBlobStore, open_blob_store
from .errors import (
    AdapterNotFoundError,
    IntegrityError,
    InvalidAdapterError,
    InvalidRequestError,
    VersionConflictError,
)
from .hub import read_source, with_origin
from .limits import CARD_NAMES, Limits
from .migrate import ensure_schema
from .refs import Ref, check_name, check_version, parse_ref
from .reports import GcReport, VerifyReport
from .signing import (
    SignatureInfo,
    TrustPolicy,
    load_trust_policy,
)
from .tables import (
    _TAGS,
    Adapter,
    AdapterVersion,
    Alias,
    Blob,
    EvalRecord,
    FileEntry,
    FileInfo,
    State,
    Tombstone,
    Version,
    VersionSignature,
)
from .validate import AdapterInfo, check_file_name, validate_files

try:  # orjson (already installed with langchain) decodes a 10,000-version listing ~3x faster
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads  # type: ignore[assignment]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (file path, bytes done, bytes total)
GC_GRACE_SECONDS = 3600.0


def _public(name: str, v: Version) -> AdapterVersion:
    data = v.model_dump(exclude={"id", "adapter_id", "number", "files_json", "doc"})
    data["files"] = v.files_json
    return AdapterVersion.from_dict({**data, "name": name, "version": v.number})


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Registry(SignatureMethods, EvalMethods):
    """A registry stored in SQL (``url``) plus a blob store: ``blob_store`` (a
    :class:`BlobStore`, ``s3://bucket/prefix`` or a folder), else ``blob_dir``, else
    ``settings.blob_store``, else the folder ``blobs`` beside a SQLite file (or
    ``settings.blob_dir``). The schema must be current (:mod:`loraroute.registry.migrate`)."""

    def __init__(
        self,
        url: str,
        *,
        blob_dir: Path | None = None,
        blob_store: BlobStore | str | None = None,
        settings: Settings | None = None,
        trust_policy: TrustPolicy | None = None,
        limits: Limits | None = None,
    ):
        self.url = url
        self.settings = settings or get_settings()
        # under a policy, pull and local_path refuse unsigned or mis-signed versions
        self.trust_policy = (
            trust_policy if trust_policy is not None else load_trust_policy(self.settings)
        )
        self.limits = limits or Limits.from_settings(self.settings)
        db_file = sqlite_path(url)
        here = db_file.parent if db_file else self.settings.registry_dir
        if blob_store is None and blob_dir is not None:
            blob_store = str(blob_dir)
        self._read, self._write = make_engines(url)
        ensure_schema(self._read, self._write, url)
        spec = blob_store if blob_store is not None else self.settings.blob_store
        self.blobs: BlobStore = open_blob_store(
            pin_blob_store(self._read, self._write, spec, redact_url(url)),
            settings=self.settings,
            default_dir=here / "blobs",
            work_dir=here / "tmp",
        )
        local = self.blobs.root.parent if isinstance(self.blobs, LocalBlobStore) else here
        self.checkout_dir = local / "checkouts"

    def __repr__(self) -> str:
        return f"Registry({self.display_url!r})"

    @property
    def display_url(self) -> str:
        """The URL with its password masked: what messages and logs show."""
        return redact_url(self.url)

    def private_strings(self) -> dict[str, str]:
        """What must not reach a remote client, with a neutral label for each: the URL (in
        every form messages use) and the store's folders. For ``loraroute.redact.Scrubber``."""
        hide = {self.url: "the server's registry", self.display_url: "the server's registry"}
        hide.update(self.blobs.private_strings())
        folders = [self.checkout_dir, self.settings.home]
        db = sqlite_path(self.url)
        if db is not None:
            folders += [db, db.parent]
        for folder in folders:
            for form in (str(folder), str(Path(folder).resolve())):
                hide[form] = "<store>"
        return hide

    def close(self) -> None:
        self._read.dispose()
        self._write.dispose()
        self.blobs.close()

    # -- push ------------------------------------------------------------------------------
    def push(
        self,
        folder: str | Path,
        name: str,
        *,
        version: int | None = None,
        require_base: str | None = None,
        progress: Progress | None = None,
        **meta: Any,
    ) -> AdapterVersion:
        """Validate ``folder`` and record it as the next version of ``name``.

        ``folder`` may also be ``hf://org/name[@revision]`` (the local Hugging Face cache, or
        a download when the Hub is reachable) or a snapshot folder of that cache; the Hub
        origin is recorded as the tag ``source``. The version is not live (routed to) until
        an alias promotes it: ``alias_set(name, "prod", v.version)``.

        Metadata keywords: domain, description, routing_examples, tags, metrics, parent,
        data_digest, training_config, author, license, base_model_id, base_fingerprint.
        Identical content pushed again returns the existing version.
        """
        check_name(name)
        if version is not None:
            check_version(version)
        info, origin = read_source(folder)
        meta = with_origin(complete_meta(info, meta, require_base, self.settings), origin)
        meta = check_meta(meta, name)
        # refuse over-limit folders before a single blob is stored
        sizes = {rel: p.stat().st_size for rel, p in info.files.items()}
        self.limits.check_sizes(sizes, name)
        self.limits.check_meta(meta, name)
        bundles = read_signature_file(info)
        if bundles:  # refuse a model.sig that does not sign these files before storing any
            bind_signatures(name, bundles, folder_files(info))
        files: builtins.list[FileInfo] = []
        total = sum(sizes.values())
        done = 0
        for rel, path in sorted(info.files.items()):
            digest, size = self.blobs.put_file(path)
            done += size
            if progress:
                progress(rel, done, total)
            files.append(FileInfo(path=rel, digest=digest, size=size))
        return self.commit_version(name, files, info, meta, version=version, signatures=bundles)

    def commit_version(
        self,
        name: str,
        files: builtins.list[FileInfo],
        info: AdapterInfo | None,
        meta: dict[str, Any],
        *,
        version: int | None = None,
        signatures: Sequence[str] = (),
        limits: Limits | None = None,
    ) -> AdapterVersion:
        """Record a version whose blobs are already stored (the last step of every push).

        ``info`` None means: validate the stored blobs themselves (the HTTP server's path).
        ``signatures`` (model-signing bundles) must sign exactly ``files``; they are attached.
        ``limits`` (default: the registry's) bound the manifest, model card and metadata.
        """
        check_name(name)
        if version is not None:
            check_version(version)
        limits = limits or self.limits
        paths = [check_file_name(f.path) for f in files]
        if len(set(paths)) != len(paths):
            raise InvalidAdapterError(f"the manifest of {name!r} lists a file path twice: {paths}")
        limits.check_files(files, name)
        meta = check_meta(meta, name)
        limits.check_meta(meta, name)
        for f in files:
            if self.blobs.size(f.digest) != f.size:
                raise IntegrityError(
                    f"blob {f.digest} of {f.path!r} is not in the store with {f.size} bytes; "
                    f"upload it before the manifest"
                )
        if info is None:  # validate the stored bytes (downloaded first from an object store)
            with self.blobs.as_files(
                {f.path: f.digest for f in files}, self.checkout_dir.parent / "tmp"
            ) as local:
                info = validate_files(local)
        signed = bind_signatures(name, list(signatures), files)
        digest = manifest_digest(files)
        if meta.get("parent"):
            meta["parent"] = self.resolve(meta["parent"]).ref
        row = Version(
            adapter_id=0,
            number=0,
            digest=digest,
            peft_type=info.peft_type,
            rank=info.rank,
            alpha=info.alpha,
            target_modules=info.target_modules,
            dtype=info.dtype,
            size=sum(f.size for f in files),
            files_json=[f.to_dict() for f in sorted(files, key=lambda f: f.path)],
            **{k: v for k, v in meta.items() if k in META_KEYS},
        )
        row.routing_examples = list(row.routing_examples or [])
        row.tags = {str(k): str(v) for k, v in (row.tags or {}).items()}
        row.metrics = metrics_of(row.metrics or {})
        row.training_config = json.loads(json.dumps(row.training_config or {}, default=str))
        for attempt in range(20):
            try:
                return self._insert_version(name, row, files, version, signed)
            except exc.IntegrityError as e:  # a concurrent writer took the number; retry
                logger.debug("version insert raced (%s), attempt %d", e.orig, attempt)
                time.sleep(0.01 * (attempt + 1))
            except exc.OperationalError as e:
                if "locked" not in str(e) and "deadlock" not in str(e):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise VersionConflictError(
            f"could not allocate a version of {name!r} after 20 attempts under contention; retry"
        )

    def _insert_version(
        self,
        name: str,
        proto: Version,
        files: builtins.list[FileInfo],
        number: int | None,
        signed: builtins.list[SignatureInfo],
    ) -> AdapterVersion:
        with Session(self._write) as s:
            bump_revision(s)
            adapter = s.exec(select(Adapter).where(Adapter.name == name)).first()
            if adapter is None:
                adapter = Adapter(name=name)
                s.add(adapter)
                s.flush()
            same = s.exec(
                select(Version).where(
                    Version.adapter_id == adapter.id, Version.digest == proto.digest
                )
            ).first()
            if same is not None:
                if number is not None and number != same.number:
                    raise VersionConflictError(
                        f"{name}@{same.number} already holds this content ({proto.digest}); "
                        f"it cannot also be version {number}"
                    )
                # read it here: a concurrent removal after this session must not fail the push
                existing = self._read_public(s, name, same)
                if self._add_signatures(s, same.id or 0, existing.ref, signed):
                    s.commit()
                    logger.info(
                        "%s already holds %s; its signatures added", existing.ref, proto.digest
                    )
                else:
                    s.rollback()
                    logger.info("%s already holds %s; push is a no-op", existing.ref, proto.digest)
                return existing
            latest = s.exec(
                select(func.max(Version.number)).where(Version.adapter_id == adapter.id)
            ).one()
            removed = s.exec(select(func.max(Tombstone.number)).where(Tombstone.name == name)).one()
            if number is not None:
                grave = s.exec(
                    select(Tombstone).where(Tombstone.name == name, Tombstone.number == number)
                ).first()
                if grave is not None:
                    raise VersionConflictError(
                        f"{name}@{number} was removed on {grave.removed_at:%Y-%m-%d %H:%M} UTC "
                        f"(it held {grave.digest}); version numbers are never reused, push "
                        f"without a version number to get a new one"
                    )
                taken = s.exec(
                    select(Version).where(
                        Version.adapter_id == adapter.id, Version.number == number
                    )
                ).first()
                if taken is not None:
                    raise VersionConflictError(
                        f"{name}@{number} exists with different content ({taken.digest}); "
                        f"versions are immutable, push without a version number to get a new one"
                    )
            row = Version.model_validate(proto.model_dump())
            row.adapter_id = adapter.id  # type: ignore[assignment]
            row.number = number if number is not None else max(latest or 0, removed or 0) + 1
            row.doc = _public(name, row).to_doc()
            s.add(row)
            s.flush()
            have = set(
                s.exec(select(Blob.digest).where(col(Blob.digest).in_({f.digest for f in files})))
            )
            for f in files:
                if f.digest not in have:
                    s.add(Blob(digest=f.digest, size=f.size))
                    have.add(f.digest)
                s.add(FileEntry(version_id=row.id, path=f.path, blob_digest=f.digest, size=f.size))  # type: ignore[arg-type]
            # in the version's own transaction: no reader sees it pushed but not yet signed
            self._add_signatures(s, row.id, f"{name}@{row.number}", signed)  # type: ignore[arg-type]
            # built before the commit expires the row: a concurrent `rm` may delete it as soon
            # as it is committed, and the push still happened (its number is never reused)
            pushed = self._to_public(name, row, [])
            s.commit()
        logger.info("pushed %s (%s)", pushed.ref, proto.digest)
        return pushed

    # -- read ------------------------------------------------------------------------------
    def _to_public(self, name: str, v: Version, aliases: builtins.list[str]) -> AdapterVersion:
        pub = AdapterVersion.from_doc_values(_loads(v.doc)) if v.doc else _public(name, v)
        pub.aliases = sorted(aliases)
        return pub

    def _read_public(self, s: Session, name: str, v: Version) -> AdapterVersion:
        """``v`` as the API shows it, its aliases read in session ``s``."""
        vid = v.id or 0
        return self._to_public(name, v, self._aliases_of(s, [vid]).get(vid, []))

    def _find(self, s: Session, ref: str | Ref) -> tuple[Adapter, Version]:
        r = parse_ref(ref) if isinstance(ref, str) else ref
        adapter = s.exec(select(Adapter).where(Adapter.name == r.name)).first()
        if adapter is None:
            raise self._no_adapter(s, r.name)
        q = select(Version).where(Version.adapter_id == adapter.id)
        if r.version is not None:
            q = q.where(Version.number == r.version)
        elif r.digest is not None:
            q = q.where(Version.digest == r.digest)
        elif r.alias is not None and r.alias != "latest":
            q = q.join(Alias, col(Alias.version_id) == col(Version.id)).where(
                Alias.adapter_id == adapter.id, Alias.name == r.alias
            )
        q = q.order_by(col(Version.number).desc())
        version = s.exec(q).first()
        if version is None:
            numbers = s.exec(select(Version.number).where(Version.adapter_id == adapter.id))
            aliases = s.exec(select(Alias.name).where(Alias.adapter_id == adapter.id))
            raise missing_version(r, numbers.all(), aliases.all())
        return adapter, version

    def _no_adapter(self, s: Session, name: str) -> AdapterNotFoundError:
        names = s.exec(select(Adapter.name)).all()
        return missing_adapter(name, names, f"the registry ({self.display_url})")

    def _aliases_of(
        self, s: Session, version_ids: builtins.list[int] | None = None
    ) -> dict[int, list[str]]:
        q = select(Alias.version_id, Alias.name)
        if version_ids is not None:
            q = q.where(col(Alias.version_id).in_(version_ids))
        out: dict[int, list[str]] = {}
        for vid, alias in s.exec(q):
            out.setdefault(vid, []).append(alias)
        return out

    def resolve(self, ref: str) -> AdapterVersion:
        """The version ``ref`` names: ``legal``, ``legal@3``, ``legal:prod``, ``legal@sha256:..``."""
        with Session(self._read) as s:
            adapter, v = self._find(s, ref)
            return self._read_public(s, adapter.name, v)

    def list(
        self,
        name: str | None = None,
        tag: str | None = None,
        domain: str | None = None,
        base: str | None = None,
    ) -> builtins.list[AdapterVersion]:
        """Versions sorted by name and number; ``tag`` is ``key`` or ``key=value``; ``base``
        matches the base model id or fingerprint."""
        if name is not None:
            check_name(name)
        for what, value in (("tag", tag), ("domain", domain), ("base", base)):
            if value is not None:
                check_text(value, f"{what} filter", max_chars=4096)
        # Two columns, not ORM objects, and one JSON decode: 10,000 versions list fast.
        vt = Version.__table__  # type: ignore[attr-defined]
        q = sa_select(vt.c.id, vt.c.doc).join(
            Adapter.__table__,  # type: ignore[attr-defined]
            col(Adapter.id) == vt.c.adapter_id,
        )
        if name is not None:
            q = q.where(col(Adapter.name) == name)
        if domain is not None:
            q = q.where(vt.c.domain == domain)
        if base is not None:
            q = q.where((vt.c.base_model_id == base) | (vt.c.base_fingerprint == base))
        # 10,000 versions make ~100,000 objects: pausing the cyclic GC halves the time
        with _gc_paused(), Session(self._read) as s:
            rows = s.connection().execute(q.order_by(col(Adapter.name), vt.c.number)).all()
            aliases = self._aliases_of(s)
            return self._build_list(rows, aliases, tag)

    @staticmethod
    def _build_list(
        rows: Any, aliases: dict[int, builtins.list[str]], tag: str | None
    ) -> builtins.list[AdapterVersion]:
        docs = _loads("[" + ",".join(doc for _, doc in rows) + "]")
        key, _, value = (tag or "").partition("=")
        out = []
        from_values = AdapterVersion.from_doc_values
        for (vid, _), d in zip(rows, docs, strict=True):
            if tag is not None:
                tags = d[_TAGS] or {}
                if key not in tags or ("=" in tag and tags[key] != value):
                    continue
            v = from_values(d)
            v.aliases = sorted(aliases.get(vid, ()))
            out.append(v)
        return out

    def names(self) -> builtins.list[str]:
        with Session(self._read) as s:
            return list(s.exec(select(Adapter.name).order_by(Adapter.name)))

    def serving(self, alias: str | None = None) -> builtins.list[AdapterVersion]:
        """The live versions, sorted by name: for each adapter, the one ``alias`` (default:
        ``settings.serving_alias``, ``prod``) points to. An adapter without that alias is not
        served (the router never picks it), however many versions it has; ``name@3`` still
        resolves for anyone who asks for it."""
        alias = alias or self.settings.serving_alias
        return [v for v in self.list() if alias in v.aliases]

    def revision(self) -> str:
        """A token that changes whenever anything in the registry changes."""
        with Session(self._read) as s:
            st = s.get(State, 1)
            return str(st.revision if st else 0)

    def model_card(self, ref: str, *, limits: Limits | None = None) -> str | None:
        """The adapter's README.md, if it has one (at most ``max_model_card_bytes`` of
        ``limits``, default the registry's: a larger card, stored before the limit, raises
        LimitError; pull the version instead)."""
        limits = limits or self.limits
        v = self.resolve(ref)
        for f in v.files:
            if f.path.lower() in CARD_NAMES:
                limits.check_card(f.size, f"the model card {f.path} of {v.ref}")
                raw = self.blobs.read(f.digest, limits.max_model_card_bytes)
                return raw.decode(errors="replace")
        return None

    # -- pull ------------------------------------------------------------------------------
    def pull(self, ref: str, dest: str | Path, *, progress: Progress | None = None) -> Path:
        """Write the version's files into ``dest`` (new or empty), verified, atomically."""
        v = self.resolve(ref)
        check = new_checkout_check(v, self.signatures(v), self.trust_policy)
        return materialize(v, Path(dest), self.blobs.iter_chunks, progress=progress, check=check)

    export = pull

    def local_path(self, ref: str | AdapterVersion) -> Path:
        """A verified folder holding ``ref``'s files, cached by manifest digest (``ref`` may
        be a version already resolved: no second lookup)."""
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        return cached_checkout(
            v,
            self.checkout_dir,
            self.blobs.iter_chunks,
            lambda: self.signatures(v),
            self.trust_policy,
        )

    def import_folder(self, folder: str | Path, name: str, **meta: Any) -> AdapterVersion:
        """Import an existing PEFT folder (same checks as push)."""
        return self.push(folder, name, **meta)

    # -- aliases and removal ---------------------------------------------------------------
    def alias_set(
        self,
        name: str,
        alias: str,
        version: int | str,
        *,
        force: bool = False,
        tolerance: float | None = None,
        actor: str | None = None,
    ) -> AdapterVersion:
        """Point ``name:alias`` at ``version`` (a number or a reference of the same adapter).

        The serving alias passes the quality gate (:mod:`.evals`): QualityGateError if the
        version's eval results regress by more than ``tolerance`` (default
        ``settings.gate_tolerance``) against the holder's, unless ``force``; each move is
        recorded (:meth:`promotions`) with the verdict and ``actor``."""
        check_name(alias, "alias")
        if alias == "latest":
            raise VersionConflictError(
                "alias 'latest' is implicit (the newest version); pick another"
            )
        ref = alias_target(name, version)
        with Session(self._write) as s:
            bump_revision(s)
            adapter, v = self._find(s, ref)
            if adapter.name != name:
                raise VersionConflictError(f"{ref!r} is not a version of {name!r}")
            if alias == self.settings.serving_alias:
                gate_promotion(
                    s,
                    self.settings,
                    adapter,
                    v,
                    alias,
                    force=force,
                    tolerance=tolerance,
                    actor=actor,
                )
            row = s.exec(
                select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
            ).first()
            if row is None:
                s.add(Alias(adapter_id=adapter.id, name=alias, version_id=v.id))  # type: ignore[arg-type]
            else:
                row.version_id = v.id  # type: ignore[assignment]
                s.add(row)
            s.flush()
            # what this call set, read before the commit: a concurrent move or removal after
            # it must not change or fail this call's answer
            out = self._read_public(s, name, v)
            s.commit()
        return out

    def alias_remove(self, name: str, alias: str) -> None:
        check_name(alias, "alias")
        with Session(self._write) as s:
            bump_revision(s)
            adapter = s.exec(select(Adapter).where(Adapter.name == name)).first()
            row = (
                adapter
                and s.exec(
                    select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
                ).first()
            )
            if not row:
                if adapter is None:
                    raise self._no_adapter(s, name)
                names = s.exec(select(Alias.name).where(Alias.adapter_id == adapter.id)).all()
                raise AdapterNotFoundError(
                    f"adapter {name!r} has no alias {alias!r}",
                    suggestions=[f"{name}:{a}" for a in close_matches(alias, names)],
                )
            s.delete(row)
            s.commit()

    def rm(self, ref: str, *, force: bool = False) -> builtins.list[AdapterVersion]:
        """Remove a version (``legal@3``, ``legal:prod``) or, for a bare name, the whole adapter.

        Refuses to remove a version an alias points to unless ``force``. Blobs stay until
        :meth:`gc`. Returns what was removed.
        """
        r = parse_ref(ref)
        victims = self.list(name=r.name) if r == Ref(r.name) else [self.resolve(ref)]
        if not victims:
            with Session(self._read) as s:
                raise self._no_adapter(s, r.name)
        aliased = [f"{v.name}:{a} -> {v.ref}" for v in victims for a in v.aliases]
        if aliased and not force:
            raise VersionConflictError(
                f"refusing to remove {ref!r}: aliases point to it ({', '.join(aliased)}); move "
                f"or remove the aliases first, or pass force=True (--force)"
            )
        with Session(self._write) as s:
            bump_revision(s)
            adapter = s.exec(select(Adapter).where(Adapter.name == r.name)).first()
            rows = (
                s.exec(
                    select(Version.id, Version.number, Version.digest).where(
                        Version.adapter_id == adapter.id,
                        col(Version.digest).in_([v.digest for v in victims]),
                    )
                ).all()
                if adapter is not None
                else []
            )
            if adapter is None or not rows:  # a concurrent rm got there first
                raise AdapterNotFoundError(f"adapter reference {ref!r} matches no version")
            for _, number, digest in rows:  # the numbers stay taken
                s.add(Tombstone(name=r.name, number=number, digest=digest))
            vids = [vid for vid, _, _ in rows]
            s.execute(delete(Alias).where(col(Alias.version_id).in_(vids)))
            s.execute(delete(VersionSignature).where(col(VersionSignature.version_id).in_(vids)))
            s.execute(delete(EvalRecord).where(col(EvalRecord.version_id).in_(vids)))
            s.execute(delete(FileEntry).where(col(FileEntry.version_id).in_(vids)))
            s.execute(delete(Version).where(col(Version.id).in_(vids)))
            left = s.exec(select(func.count()).where(col(Version.adapter_id) == adapter.id)).one()
            if not left:
                s.execute(delete(Alias).where(col(Alias.adapter_id) == adapter.id))
                s.delete(adapter)
            s.commit()
        removed = {digest for _, _, digest in rows}
        return [v for v in victims if v.digest in removed]

    # -- integrity -------------------------------------------------------------------------
    def verify(self, ref: str | None = None) -> VerifyReport:
        """Re-hash the blobs of ``ref`` (or of every version); problems are listed, not raised."""
        versions = [self.resolve(ref)] if ref else self.list()
        seen: dict[str, str | None] = {}
        report = VerifyReport()
        for v in versions:
            report.versions += 1
            for f in v.files:
                if f.digest not in seen:
                    seen[f.digest] = self.blobs.verify(f.digest)
                if seen[f.digest]:
                    report.problems.append(f"{v.ref} {f.path}: {seen[f.digest]}")
            report.add_signatures(self.signature_report(v))
        report.blobs = len(seen)
        return report

    def gc(self, *, dry_run: bool = False, grace_seconds: float = GC_GRACE_SECONDS) -> GcReport:
        """Delete blobs no version references, and temp files of interrupted writes (files
        younger than ``grace_seconds`` are kept, since a push may be about to use them)."""
        if not isinstance(grace_seconds, int | float) or not 0 <= grace_seconds < float("inf"):
            raise InvalidRequestError(
                f"grace_seconds={grace_seconds!r} is not allowed: use a finite number >= 0"
            )
        with Session(self._read) as s:
            used = set(s.exec(select(FileEntry.blob_digest).distinct()))
        report = GcReport(dry_run=dry_run)
        now = time.time()
        for blob in self.blobs.list_blobs():
            if blob.digest in used:
                continue
            if now - blob.modified < grace_seconds:
                report.kept_recent += 1
                continue
            report.removed.append(blob.digest)
            report.bytes += blob.size
        if not dry_run:
            self.blobs.delete(report.removed)
        report.tmp_files, report.tmp_bytes = self.blobs.clean_tmp(grace_seconds, dry_run=dry_run)
        if not dry_run:
            with Session(self._write) as s:
                used = set(s.exec(select(FileEntry.blob_digest).distinct()))
                stmt = delete(Blob)
                if used:
                    stmt = stmt.where(col(Blob.digest).not_in(used))
                s.execute(stmt)
                s.commit()
        return report


__all__ = ["GC_GRACE_SECONDS", "Registry", "complete_meta"]
