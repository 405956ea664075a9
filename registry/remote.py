"""Client of the HTTP registry, with the same methods as the local :class:`Registry`.

Uploads stream in chunks and skip blobs the server already has; the manifest goes last.
Downloads stream into a temp folder, are re-hashed, and are renamed into place.

Example::

    >>> reg = open_registry("http://127.0.0.1:8765", token="lrt_...")  # doctest: +SKIP
    >>> reg.push("out/legal", "legal")  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from loraroute.settings import Settings, get_settings

from . import errors
from ._checkout import cached_checkout_ok, new_checkout_check, sign_version
from ._transfer import checkout_ok, materialize
from .blobs import CHUNK, sha256_file
from .errors import RegistryError, RemoteError, SignatureError
from .local import bind_signatures, complete_meta, read_signature_file
from .refs import check_name
from .reports import GcReport, VerifyReport
from .signing import (
    SignatureInfo,
    SignatureReport,
    TrustPolicy,
    check_signatures,
    load_trust_policy,
)
from .tables import AdapterVersion, FileInfo
from .validate import validate_folder

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


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
    ) -> None:
        self.url = url.rstrip("/")
        self.settings = settings or get_settings()
        # the client's own policy: signatures the server returns are checked here
        self.trust_policy = (
            trust_policy if trust_policy is not None else load_trust_policy(self.settings)
        )
        if token is None and self.settings.registry_token is not None:
            token = self.settings.registry_token.get_secret_value()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + "/v1", headers=headers, timeout=timeout)
        self.checkout_dir = self.settings.registry_dir / "remote-checkouts"

    def __repr__(self) -> str:
        return f"RemoteRegistry({self.url!r})"

    def close(self) -> None:
        self._http.close()

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise RemoteError(f"registry {self.url} is unreachable or failed: {e}") from e
        self._raise_for(resp)
        return resp

    def _raise_for(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            body = resp.json()
            cls = getattr(errors, body.get("error", ""), None)
            detail = body.get("detail")
        except ValueError:
            cls, detail = None, None
        if not (isinstance(cls, type) and issubclass(cls, RegistryError)):
            cls = RemoteError
        raise cls(str(detail or f"{resp.status_code} from {self.url}{resp.request.url.path}"))

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    @staticmethod
    def _version(data: dict[str, Any]) -> AdapterVersion:
        return AdapterVersion.from_dict(data)

    # -- push ------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        try:
            resp = self._http.head(f"/blobs/{digest}")
        except httpx.HTTPError as e:
            raise RemoteError(f"registry {self.url} is unreachable: {e}") from e
        if resp.status_code == 404:
            return False
        self._raise_for(resp)
        return True

    def upload_blob(
        self, path: Path, digest: str, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    if on_bytes:
                        on_bytes(len(block))
                    yield block

        self._request(
            "PUT",
            f"/blobs/{digest}",
            content=body(),
            # a known length avoids chunked transfer encoding, which is slower to parse
            headers={
                "content-type": "application/octet-stream",
                "content-length": str(path.stat().st_size),
            },
        )

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
        info = validate_folder(Path(folder))
        meta = complete_meta(info, meta, require_base, self.settings)
        bundles = read_signature_file(info)
        files: builtins.list[FileInfo] = []
        total = sum(p.stat().st_size for p in info.files.values())
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
        return self._version(self._json("POST", f"/adapters/{name}/versions", json=payload))

    def import_folder(self, folder: str | Path, name: str, **meta: Any) -> AdapterVersion:
        return self.push(folder, name, **meta)

    # -- read ------------------------------------------------------------------------------
    def resolve(self, ref: str) -> AdapterVersion:
        from .refs import parse_ref

        parse_ref(ref)  # same error, before any network
        return self._version(self._json("GET", "/resolve", params={"ref": ref}))

    def list(
        self,
        name: str | None = None,
        tag: str | None = None,
        domain: str | None = None,
        base: str | None = None,
    ) -> builtins.list[AdapterVersion]:
        params = {
            k: v
            for k, v in {"name": name, "tag": tag, "domain": domain, "base": base}.items()
            if v is not None
        }
        return [self._version(d) for d in self._json("GET", "/versions", params=params)]

    def serving(self, alias: str = "prod") -> builtins.list[AdapterVersion]:
        return [self._version(d) for d in self._json("GET", "/serving", params={"alias": alias})]

    def revision(self) -> str:
        return self._json("GET", "/revision")["revision"]

    def model_card(self, ref: str) -> str | None:
        return self._json("GET", "/model-card", params={"ref": ref})["model_card"]

    # -- pull ------------------------------------------------------------------------------
    def _download(self, digest: str) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", f"/blobs/{digest}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for(resp)
                yield from resp.iter_bytes()  # decoded if a proxy compressed it
        except httpx.HTTPError as e:
            raise RemoteError(f"download of {digest} from {self.url} failed: {e}") from e

    def pull(self, ref: str, dest: str | Path, *, progress: Progress | None = None) -> Path:
        """Download ``ref`` into ``dest`` (new or empty), verified, atomically; under a trust
        policy its signatures are verified too, and one is written as ``model.sig``."""
        v = self.resolve(ref)
        check = new_checkout_check(v, self.signatures(v), self.trust_policy)
        return materialize(v, Path(dest), self._download, progress=progress, check=check)

    export = pull

    def local_path(self, ref: str | AdapterVersion) -> Path:
        """A verified local folder for ``ref``, cached by manifest digest (``ref`` may be a
        version already resolved: no second request)."""
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        dest = self.checkout_dir / v.digest.split(":", 1)[1]
        policy = self.trust_policy
        if dest.is_dir():
            if checkout_ok(v, dest) and (
                policy is None or cached_checkout_ok(v, dest, self.signatures(v), policy)
            ):
                return dest
            logger.warning("cached checkout %s is incomplete; fetching it again", dest)
            shutil.rmtree(dest, ignore_errors=True)
        self.checkout_dir.mkdir(parents=True, exist_ok=True)
        check = new_checkout_check(v, self.signatures(v), policy)
        try:
            return materialize(v, dest, self._download, check=check)
        except FileExistsError:
            return dest

    # -- signatures ------------------------------------------------------------------------
    def signatures(self, ref: str | AdapterVersion) -> builtins.list[SignatureInfo]:
        """The signatures the server stores with a version (each bundle parsed again here;
        one that does not parse is skipped with a warning)."""
        target = ref.digest_ref if isinstance(ref, AdapterVersion) else ref
        try:
            resp = self._http.get("/signatures", params={"ref": target})
        except httpx.HTTPError as e:
            raise RemoteError(f"registry {self.url} is unreachable or failed: {e}") from e
        if resp.status_code == 404 and "error" not in resp.text:
            return []  # a server from before signatures: none (a policy then refuses)
        self._raise_for(resp)
        data = resp.json()
        out = []
        for item in data if isinstance(data, list) else []:
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
        data = self._json(
            "POST", "/signatures", params={"ref": v.digest_ref}, json={"bundle": bundle}
        )
        return SignatureInfo.from_dict(data)

    def signature_report(
        self, ref: str | AdapterVersion, policy: TrustPolicy | None = None
    ) -> SignatureReport:
        """Check a version's signatures against its digests and ``policy`` (default: this
        client's ``trust_policy``), here on the client."""
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        bundles = [sig.bundle for sig in self.signatures(v)]
        return check_signatures(
            v.ref, {f.path: f.digest for f in v.files}, bundles, policy or self.trust_policy
        )

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
    def alias_set(self, name: str, alias: str, version: int | str) -> AdapterVersion:
        return self._version(
            self._json("PUT", f"/adapters/{name}/aliases/{alias}", json={"version": version})
        )

    def alias_remove(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/adapters/{name}/aliases/{alias}")

    def rm(self, ref: str, *, force: bool = False) -> builtins.list[AdapterVersion]:
        data = self._json("DELETE", "/versions", params={"ref": ref, "force": force})
        return [self._version(d) for d in data]

    def verify(self, ref: str | None = None) -> VerifyReport:
        data = self._json("POST", "/verify", params={"ref": ref} if ref else {})
        report = VerifyReport(
            versions=int(data.get("versions", 0)),
            blobs=int(data.get("blobs", 0)),
            problems=[str(p) for p in data.get("problems", [])],
        )
        # signatures are judged here, under this client's policy, not the server's
        for v in [self.resolve(ref)] if ref else self.list():
            report.add_signatures(self.signature_report(v))
        return report

    def gc(self, *, dry_run: bool = False, grace_seconds: float = 3600.0) -> GcReport:
        data = self._json(
            "POST", "/gc", params={"dry_run": dry_run, "grace_seconds": grace_seconds}
        )
        return GcReport(**data)


__all__ = ["RemoteRegistry"]
