"""Client of the HTTP registry, with the same methods as the local :class:`Registry`.

Uploads stream in chunks and skip blobs the server already has; the manifest goes last.
Downloads stream into a temp folder, are re-hashed, and are renamed into place.

Every answer is untrusted input: it is read up to ``limits.max_response_bytes`` and checked
in full by the models of :mod:`.protocol` (digests, names, version numbers, file paths, sizes,
counts) before any value is used; a version's digest must be the digest of its file list, so
a checkout folder is named only by a well-formed digest of the files it holds. A bad answer
raises :class:`InvalidResponseError` and nothing is written.

Example::

    >>> reg = open_registry("http://127.0.0.1:8765", token="lrt_...")  # doctest: +SKIP
    >>> reg.push("out/legal", "legal")  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import json
import logging
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from loraroute.redact import redact_text, redact_url
from loraroute.settings import Settings, get_settings

from . import errors
from ._checkout import cached_checkout, new_checkout_check, sign_version, signature_report
from ._meta import bind_signatures, check_meta, complete_meta, read_signature_file
from ._transfer import materialize
from .blobs import CHUNK, check_digest, sha256_file
from .errors import InvalidResponseError, LimitError, RegistryError, RemoteError, SignatureError
from .evals import EvalResult, GateReport, as_results, check_tolerance
from .hub import read_source, with_origin
from .limits import Limits
from .protocol import (
    ErrorOut,
    EvalOut,
    GateOut,
    GcOut,
    ModelCardOut,
    PromotionOut,
    RevisionOut,
    VerifyOut,
    VersionOut,
)
from .refs import check_name, parse_ref
from .reports import GcReport, VerifyReport
from .signing import (
    SignatureInfo,
    SignatureReport,
    TrustPolicy,
    load_trust_policy,
)
from .tables import AdapterVersion, FileInfo

logger = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 2000
MAX_SIGNATURES = 64  # a version's signatures a client reads
Progress = Callable[[str, int, int], None]
M = TypeVar("M")

_VERSION = TypeAdapter(VersionOut)
_VERSIONS = TypeAdapter(list[VersionOut])
_EVALS = TypeAdapter(list[EvalOut])
_PROMOTIONS = TypeAdapter(list[PromotionOut])


def _eval_payload(r: EvalResult) -> dict[str, Any]:
    d = r.to_dict()
    for key in ("ref", "actor", "created_at"):
        d.pop(key)
    return d


def _clean_detail(text: str) -> str:
    """A server's message, safe to show: control characters replaced, length bounded."""
    text = "".join(
        "?" if unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" else c
        for c in text[: MAX_DETAIL_CHARS + 1]
    )
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "..."


def _problems(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "answer"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return _clean_detail("; ".join(parts) + more)


class RemoteRegistry:
    """A registry served by ``adapters registry serve`` at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        settings: Settings | None = None,
        timeout: float = 60.0,
        trust_policy: TrustPolicy | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.display_url = redact_url(self.url)
        self.settings = settings or get_settings()
        # the client's own policy: signatures the server returns are checked here
        self.trust_policy = (
            trust_policy if trust_policy is not None else load_trust_policy(self.settings)
        )
        if token is None and self.settings.registry_token is not None:
            token = self.settings.registry_token.get_secret_value()
        self.limits = limits or Limits.from_settings(self.settings)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + "/v1", headers=headers, timeout=timeout)
        self.checkout_dir = self.settings.registry_dir / "remote-checkouts"

    def __repr__(self) -> str:
        return f"RemoteRegistry({self.display_url!r})"

    def close(self) -> None:
        self._http.close()

    def private_strings(self) -> dict[str, str]:
        """What must not reach a third party (see ``Registry.private_strings``)."""
        return {
            self.url: "the registry",
            self.display_url: "the registry",
            str(self.checkout_dir): "<checkouts>",
        }

    # -- plumbing --------------------------------------------------------------------------
    def _unreachable(self, e: httpx.HTTPError, what: str) -> RemoteError:
        return RemoteError(
            f"registry {self.display_url} is unreachable or failed during {what}: "
            f"{redact_text(str(e))}"
        )

    def _invalid(self, method: str, path: str, why: str) -> InvalidResponseError:
        return InvalidResponseError(
            f"registry {self.display_url} answered {method} {path} with {why}; the server is "
            f"broken, hostile or not a loraroute registry, so the answer was not used"
        )

    def _read(self, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
        """(status, body) of a request, the body read up to ``limits.max_response_bytes``."""
        limit = self.limits.max_response_bytes
        try:
            with self._http.stream(method, path, **kw) as resp:
                body = bytearray()
                for block in resp.iter_bytes():
                    body += block
                    if len(body) > limit:
                        raise self._invalid(
                            method,
                            path,
                            f"more than {limit} bytes (max_response_bytes, "
                            f"LORAROUTE_REGISTRY_MAX_RESPONSE_BYTES)",
                        )
                return resp.status_code, bytes(body)
        except httpx.HTTPError as e:
            raise self._unreachable(e, f"{method} {path}") from None

    def _raise_for(self, status: int, body: bytes, method: str, path: str) -> None:
        if status < 400:
            return
        cls: type[RegistryError] = RemoteError
        detail = ""
        try:
            err = ErrorOut.model_validate_json(body)
        except ValidationError:
            err = None
        if err is not None:
            named = getattr(errors, err.error, None) if err.error in errors.__all__ else None
            if isinstance(named, type) and issubclass(named, RegistryError):
                cls = named
            detail = _clean_detail(err.detail)
        if cls is RemoteError:
            detail = f"{status} from {self.display_url} on {method} {path}" + (
                f": {detail}" if detail else ""
            )
        raise cls(detail)

    def _call(
        self, method: str, path: str, model: TypeAdapter[M] | type[BaseModel], **kw: Any
    ) -> Any:
        status, body = self._read(method, path, **kw)
        self._raise_for(status, body, method, path)
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_json(body)
            return model.model_validate_json(body)
        except ValidationError as e:
            raise self._invalid(method, path, f"an invalid value: {_problems(e)}") from None

    def _bounded(self, v: AdapterVersion, method: str, path: str) -> AdapterVersion:
        """``v`` if it is within this client's limits (files, sizes, routing examples)."""
        try:
            self.limits.check_files(v.files, v.ref)
            if len(v.routing_examples) > self.limits.max_routing_examples or any(
                len(x) > self.limits.max_routing_example_chars for x in v.routing_examples
            ):
                self.limits.check_meta({"routing_examples": v.routing_examples}, v.ref)
        except LimitError as e:
            raise self._invalid(
                method, path, f"a version beyond this client's limits: {e}"
            ) from None
        return v

    def _one(self, method: str, path: str, **kw: Any) -> AdapterVersion:
        out: VersionOut = self._call(method, path, _VERSION, **kw)
        return self._bounded(out.to_version(), method, path)

    def _many(self, method: str, path: str, **kw: Any) -> builtins.list[AdapterVersion]:
        out: builtins.list[VersionOut] = self._call(method, path, _VERSIONS, **kw)
        return [self._bounded(v.to_version(), method, path) for v in out]

    def _expect(self, v: AdapterVersion, method: str, path: str, **want: Any) -> AdapterVersion:
        for key, value in want.items():
            if value is not None and getattr(v, key) != value:
                raise self._invalid(
                    method, path, f"{key} {getattr(v, key)!r} where {value!r} was asked for"
                )
        return v

    # -- push ------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        check_digest(digest)
        try:
            resp = self._http.head(f"/blobs/{digest}")
        except httpx.HTTPError as e:
            raise self._unreachable(e, f"HEAD /blobs/{digest}") from None
        if resp.status_code == 404:
            return False
        self._raise_for(resp.status_code, b"", "HEAD", f"/blobs/{digest}")
        return True

    def upload_blob(
        self, path: Path, digest: str, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        check_digest(digest)

        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    if on_bytes:
                        on_bytes(len(block))
                    yield block

        status, answer = self._read(
            "PUT",
            f"/blobs/{digest}",
            content=body(),
            # a known length avoids chunked transfer encoding, which is slower to parse
            headers={
                "content-type": "application/octet-stream",
                "content-length": str(path.stat().st_size),
            },
        )
        self._raise_for(status, answer, "PUT", f"/blobs/{digest}")

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
        """Validate locally, upload missing blobs, then post the manifest (same as Registry.push)."""
        check_name(name)
        info, origin = read_source(folder)
        meta = with_origin(complete_meta(info, meta, require_base, self.settings), origin)
        meta = check_meta(meta, name)
        sizes = {rel: p.stat().st_size for rel, p in info.files.items()}
        self.limits.check_sizes(sizes, name)
        self.limits.check_meta(meta, name)
        bundles = read_signature_file(info)
        files: builtins.list[FileInfo] = []
        total = sum(sizes.values())
        done = 0
        hashed = {rel: sha256_file(path) for rel, path in sorted(info.files.items())}
        if bundles:  # refuse a model.sig that does not sign these files before uploading
            bind_signatures(name, bundles, [FileInfo(r, *h) for r, h in hashed.items()])
        for rel, path in sorted(info.files.items()):
            digest, size = hashed[rel]
            files.append(FileInfo(path=rel, digest=digest, size=size))
            if not self.has_blob(digest):

                def tick(n: int, rel: str = rel) -> None:
                    nonlocal done
                    done += n
                    if progress:
                        progress(rel, done, total)

                self.upload_blob(path, digest, tick)
            else:
                done += size
                if progress:
                    progress(rel, done, total)
        payload: dict[str, Any] = {
            "files": [f.to_dict() for f in files],
            "meta": meta,
            "version": version,
        }
        if bundles:  # only then: a server without signature support still takes the rest
            payload["signatures"] = bundles
        route = f"/adapters/{name}/versions"
        v = self._one("POST", route, json=payload)
        return self._expect(v, "POST", route, name=name, version=version)

    def import_folder(self, folder: str | Path, name: str, **meta: Any) -> AdapterVersion:
        return self.push(folder, name, **meta)

    # -- read ------------------------------------------------------------------------------
    def resolve(self, ref: str) -> AdapterVersion:
        r = parse_ref(ref)  # same error, before any network
        v = self._one("GET", "/resolve", params={"ref": ref})
        return self._expect(v, "GET", "/resolve", name=r.name, version=r.version, digest=r.digest)

    def list(
        self,
        name: str | None = None,
        tag: str | None = None,
        domain: str | None = None,
        base: str | None = None,
    ) -> builtins.list[AdapterVersion]:
        if name is not None:
            check_name(name)
        params = {
            k: v
            for k, v in {"name": name, "tag": tag, "domain": domain, "base": base}.items()
            if v is not None
        }
        out = self._many("GET", "/versions", params=params)
        if name is not None:
            for v in out:
                self._expect(v, "GET", "/versions", name=name)
        return out

    def serving(self, alias: str | None = None) -> builtins.list[AdapterVersion]:
        """The live versions (those ``alias``, default ``settings.serving_alias``, points to)."""
        alias = alias or self.settings.serving_alias
        return [
            v for v in self._many("GET", "/serving", params={"alias": alias}) if alias in v.aliases
        ]

    def revision(self) -> str:
        out: RevisionOut = self._call("GET", "/revision", RevisionOut)
        return out.revision

    def model_card(self, ref: str) -> str | None:
        parse_ref(ref)
        out: ModelCardOut = self._call("GET", "/model-card", ModelCardOut, params={"ref": ref})
        card = out.model_card
        if (
            card is not None
            and len(card.encode(errors="replace")) > self.limits.max_model_card_bytes
        ):
            raise self._invalid(
                "GET",
                "/model-card",
                f"a model card of more than {self.limits.max_model_card_bytes} bytes "
                f"(LORAROUTE_REGISTRY_MAX_MODEL_CARD_BYTES)",
            )
        return card

    # -- pull ------------------------------------------------------------------------------
    def _download(self, digest: str) -> Iterator[bytes]:
        check_digest(digest)
        try:
            with self._http.stream("GET", f"/blobs/{digest}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for(resp.status_code, resp.content, "GET", f"/blobs/{digest}")
                yield from resp.iter_bytes()  # decoded if a proxy compressed it
        except httpx.HTTPError as e:
            raise self._unreachable(e, f"download of {digest}") from None

    def pull(self, ref: str, dest: str | Path, *, progress: Progress | None = None) -> Path:
        """Download ``ref`` into ``dest`` (new or empty), verified, atomically; under a trust
        policy its signatures are verified too, and one is written as ``model.sig``."""
        v = self.resolve(ref)
        check = new_checkout_check(v, self._checkout_signatures(v), self.trust_policy)
        return materialize(v, Path(dest), self._download, progress=progress, check=check)

    export = pull

    def local_path(self, ref: str | AdapterVersion) -> Path:
        """A verified local folder for ``ref``, cached by manifest digest (``ref`` may be a
        version already resolved: no second request)."""
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        return cached_checkout(
            v,
            self.checkout_dir,
            self._download,
            lambda: self._checkout_signatures(v),
            self.trust_policy,
        )

    # -- signatures ------------------------------------------------------------------------
    def _checkout_signatures(self, v: AdapterVersion) -> builtins.list[SignatureInfo]:
        """The signatures to check (under a policy) and write beside a checkout: without a
        policy they are a courtesy, so a server that cannot list them gives none."""
        if self.trust_policy is not None:
            return self.signatures(v)
        try:
            return self.signatures(v)
        except RegistryError as exc:
            logger.info("no signatures of %s from %s: %s", v.ref, self.display_url, exc)
            return []

    def signatures(self, ref: str | AdapterVersion) -> builtins.list[SignatureInfo]:
        """The signatures the server stores with a version (each bundle parsed again here;
        one that does not parse is skipped with a warning)."""
        target = ref.digest_ref if isinstance(ref, AdapterVersion) else ref
        path = "/signatures"
        status, body = self._read("GET", path, params={"ref": target})
        if status == 404 and b'"error"' not in body:
            return []  # a server from before signatures: none (a policy then refuses)
        self._raise_for(status, body, "GET", path)
        data = self._json_body(body, "GET", path)
        if not isinstance(data, builtins.list) or len(data) > MAX_SIGNATURES:
            raise self._invalid("GET", path, f"not a list of at most {MAX_SIGNATURES} signatures")
        out = []
        for item in data:
            try:
                out.append(SignatureInfo.from_dict(item if isinstance(item, dict) else {}))
            except SignatureError as exc:
                logger.warning(
                    "%s: skipping a malformed signature from the server: %s", target, exc
                )
        return out

    def attach_signature(self, ref: str | AdapterVersion, bundle: str) -> SignatureInfo:
        """Send a model-signing bundle to be stored with a version (needs a write token)."""
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        bind_signatures(v.ref, [bundle], v.files)  # the same check as the server's, first
        path = "/signatures"
        status, body = self._read(
            "POST", path, params={"ref": v.digest_ref}, json={"bundle": bundle}
        )
        self._raise_for(status, body, "POST", path)
        data = self._json_body(body, "POST", path)
        return SignatureInfo.from_dict(data if isinstance(data, dict) else {})

    def _json_body(self, body: bytes, method: str, path: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise self._invalid(method, path, "a body that is not JSON") from None

    def signature_report(
        self, ref: str | AdapterVersion, policy: TrustPolicy | None = None
    ) -> SignatureReport:
        """Check a version's signatures against its digests and ``policy`` (default: this
        client's ``trust_policy``), here on the client."""
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        return signature_report(v, self.signatures(v), policy or self.trust_policy)

    def sign(
        self,
        ref: str,
        *,
        key: str | Path,
        password: str | None = None,
        certificate: str | Path | None = None,
        chain: Sequence[str | Path] = (),
    ) -> SignatureInfo:
        """Download and verify the version, sign it here (the key never leaves this machine),
        and send the bundle to the server."""
        v = self.resolve(ref)
        bundle = sign_version(
            v, self._download, key, password=password, certificate=certificate, chain=chain
        )
        return self.attach_signature(v, bundle)

    # -- writes ----------------------------------------------------------------------------
    def alias_set(
        self,
        name: str,
        alias: str,
        version: int | str,
        *,
        force: bool = False,
        tolerance: float | None = None,
    ) -> AdapterVersion:
        """Same as Registry.alias_set; the server enforces the quality gate under its own
        settings (``force``, or a tolerance looser than the server's, needs an admin token)."""
        check_name(name)
        check_name(alias, "alias")
        body: dict[str, Any] = {"version": version}
        if force:
            body["force"] = True
        if tolerance is not None:
            body["tolerance"] = check_tolerance(tolerance)
        path = f"/adapters/{name}/aliases/{alias}"
        v = self._one("PUT", path, json=body)
        return self._expect(v, "PUT", path, name=name)

    # -- eval results and the quality gate -------------------------------------------------
    def record_eval(
        self, ref: str, results: Any, *, source: str | None = None
    ) -> builtins.list[EvalResult]:
        """Send eval results to be stored with ``ref`` (checked here first, as the server
        will); needs a write token."""
        r = parse_ref(ref)
        checked = as_results(results, source=source)
        payload = {"results": [_eval_payload(x) for x in checked]}
        out: builtins.list[EvalOut] = self._call(
            "POST", "/evals", _EVALS, params={"ref": ref}, json=payload
        )
        return self._eval_results(out, r.name, "POST")

    def evals(self, ref: str) -> builtins.list[EvalResult]:
        """Eval results of a version, or of every version for a bare name, oldest first."""
        r = parse_ref(ref)
        out: builtins.list[EvalOut] = self._call("GET", "/evals", _EVALS, params={"ref": ref})
        return self._eval_results(out, r.name, "GET")

    def _eval_results(
        self, out: builtins.list[EvalOut], name: str, method: str
    ) -> builtins.list[EvalResult]:
        results = []
        for item in out:
            if parse_ref(item.ref).name != name:
                raise self._invalid(method, "/evals", f"a result of {item.ref!r}, not of {name!r}")
            result = item.to_result()
            result.ref, result.actor, result.created_at = item.ref, item.actor, item.created_at
            results.append(result)
        return results

    def gate_check(
        self,
        name: str,
        version: int | str,
        *,
        alias: str | None = None,
        tolerance: float | None = None,
    ) -> GateReport:
        """The server's quality gate on pointing ``alias`` (default: this client's serving
        alias) at ``version``; nothing moves."""
        check_name(name)
        params: dict[str, Any] = {
            "name": name,
            "version": str(version),
            "alias": check_name(alias or self.settings.serving_alias, "alias"),
        }
        if tolerance is not None:
            params["tolerance"] = check_tolerance(tolerance)
        out: GateOut = self._call("GET", "/gate", GateOut, params=params)
        if out.name != name:
            raise self._invalid("GET", "/gate", f"a report on {out.name!r}, not {name!r}")
        return out.to_report()

    def promotions(self, name: str) -> builtins.list[dict[str, Any]]:
        """Moves of ``name``'s serving alias with the gate's verdicts, oldest first."""
        check_name(name)
        out: builtins.list[PromotionOut] = self._call(
            "GET", "/promotions", _PROMOTIONS, params={"name": name}
        )
        rows = [
            {**p.model_dump(by_alias=True), "created_at": p.created_at.isoformat()} for p in out
        ]
        if any(row["name"] != name for row in rows):
            raise self._invalid(
                "GET", "/promotions", f"a promotion of another adapter than {name!r}"
            )
        return rows

    def alias_remove(self, name: str, alias: str) -> None:
        check_name(name)
        check_name(alias, "alias")
        path = f"/adapters/{name}/aliases/{alias}"
        status, body = self._read("DELETE", path)
        self._raise_for(status, body, "DELETE", path)

    def rm(self, ref: str, *, force: bool = False) -> builtins.list[AdapterVersion]:
        r = parse_ref(ref)
        out = self._many("DELETE", "/versions", params={"ref": ref, "force": force})
        for v in out:
            self._expect(v, "DELETE", "/versions", name=r.name)
        return out

    def verify(self, ref: str | None = None) -> VerifyReport:
        if ref:
            parse_ref(ref)
        out: VerifyOut = self._call(
            "POST", "/verify", VerifyOut, params={"ref": ref} if ref else {}
        )
        report = VerifyReport(versions=out.versions, blobs=out.blobs, problems=list(out.problems))
        # signatures are judged here, under this client's policy, not the server's
        for v in [self.resolve(ref)] if ref else self.list():
            report.add_signatures(self.signature_report(v))
        return report

    def gc(self, *, dry_run: bool = False, grace_seconds: float = 3600.0) -> GcReport:
        out: GcOut = self._call(
            "POST", "/gc", GcOut, params={"dry_run": dry_run, "grace_seconds": grace_seconds}
        )
        data = out.model_dump()
        data["removed"] = list(data["removed"])
        return GcReport(**data)


__all__ = ["RemoteRegistry"]
