"""``adapters`` registry verbs: push, pull, ls, show, alias, rm, verify, sign, gc, export,
import, and ``registry serve`` / ``registry migrate`` / ``registry token create|list|revoke``.

Every command takes ``--registry URL`` and ``--token`` (:mod:`loraroute.cli_options`).
Read commands take ``--json``. Heavy imports happen inside commands. A database failure is a
one-line error with the password masked, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from loraroute.cli_options import json_option, registry_option, token_option

from ._cli_gate import alias, evals_group, gate_history, print_gate_history
from ._cli_parts import (
    Command,
    Group,
    SourceType,
    alias_option,
    console,
    dump,
    name_for,
    not_live_hint,
    open_registry_for,
    promote,
    version_dict,
    version_table,
)

# the short names this module's commands use
_Command, _Group, _open = Command, Group, open_registry_for
_dump, _version_dict = dump, version_dict

trust_policy_option = click.option(
    "--trust-policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON trust policy: refuse versions without a trusted signature "
    "(default: LORAROUTE_TRUST_POLICY, else none: signatures are only reported).",
)


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from .auth import parse_duration

        if not isinstance(value, str):
            return value
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise click.BadParameter(f"{path} is not valid JSON: {e}", param_hint=what) from None


def _kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = value
    return out


@contextmanager
def _progress(label: str, enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(path: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"{label} {path}")

        yield update


@click.command(cls=_Command)
@click.argument("source", type=SourceType())
@click.option(
    "--name", default=None, help="Adapter name [default for hf://: the repository's name]."
)
@alias_option
@click.option("--domain", default=None)
@click.option("--description", default=None)
@click.option("--example", "examples", multiple=True, help="A routing example (repeatable).")
@click.option(
    "--examples-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Routing examples, one per line (or a JSON list).",
)
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Free-form tag (repeatable).")
@click.option("--metric", "metrics", multiple=True, metavar="K=V", help="Eval metric (repeatable).")
@click.option("--parent", default=None, help="Parent version reference (lineage).")
@click.option("--data-digest", default=None)
@click.option(
    "--training-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file with the training configuration.",
)
@click.option("--author", default=None)
@click.option("--license", "license_", default=None)
@click.option("--base-model-id", default=None)
@click.option("--base-fingerprint", default=None)
@registry_option
@token_option
@json_option
def push(
    source: Path | str,
    name: str | None,
    aliases: tuple[str, ...],
    domain,
    description,
    examples,
    examples_file,
    tags,
    metrics,
    parent,
    data_digest,
    training_config,
    author,
    license_,
    base_model_id,
    base_fingerprint,
    registry_url,
    token,
    as_json,
) -> None:
    """Validate a PEFT adapter and store it as the next version of NAME.

    SOURCE is a folder (a Hugging Face cache snapshot too) or hf://ORG/NAME[@REV], taken from
    the local Hugging Face cache or downloaded when the Hub is reachable. The version is not
    live (routed to) until promoted: --alias prod, or `adapters alias set NAME prod N` later.
    """
    name = name_for(source, name)
    routing = list(examples)
    if examples_file:
        text = examples_file.read_text(errors="replace")
        if text.lstrip().startswith("["):
            loaded = _read_json(examples_file, "--examples-file")
            if not isinstance(loaded, list):
                raise click.BadParameter("expected a JSON list", param_hint="--examples-file")
            routing += [str(x) for x in loaded]
        else:
            routing += [line.strip() for line in text.splitlines() if line.strip()]
    try:
        metric_values = {k: float(v) for k, v in _kv(metrics, "--metric").items()}
    except ValueError as e:
        raise click.BadParameter(
            f"metric values must be numbers ({e})", param_hint="--metric"
        ) from e
    reg = _open(registry_url, token)
    with _progress("push", not as_json) as progress:
        v = reg.push(
            source,
            name,
            domain=domain,
            description=description,
            routing_examples=routing or None,
            tags=_kv(tags, "--tag") or None,
            metrics=metric_values or None,
            parent=parent,
            data_digest=data_digest,
            training_config=(
                _read_json(training_config, "--training-config") if training_config else None
            ),
            author=author,
            license=license_,
            base_model_id=base_model_id,
            base_fingerprint=base_fingerprint,
            progress=progress,
        )
    v = promote(reg, v, aliases)
    if as_json:
        _dump(_version_dict(v, reg.settings.serving_alias))
    else:
        click.echo(f"{v.ref} {v.digest}")
        not_live_hint(v, reg)


@click.command(cls=_Command)
@click.argument("ref")
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to create (must be new or empty).",
)
@registry_option
@token_option
@trust_policy_option
@json_option
def pull(ref: str, dest: Path, registry_url, token, trust_policy, as_json) -> None:
    """Download REF into a plain PEFT folder, verifying every file (and, under a trust policy,
    its signature); a signature is written beside the files as model.sig."""
    reg = _open(registry_url, token, trust_policy)
    v = reg.resolve(ref)
    with _progress("pull", not as_json) as progress:
        out = reg.pull(v.ref, dest, progress=progress)
    if as_json:
        _dump({"ref": v.ref, "digest": v.digest, "folder": str(out)})
    else:
        click.echo(str(out))


@click.command(cls=_Command)
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path), required=False)
@click.option(
    "--hub",
    "repo_id",
    default=None,
    metavar="ORG/NAME",
    help="Make DEST Hub-ready for this repository: adapter_config.json naming the base by its "
    "Hub id and a model card (README.md) with YAML front matter.",
)
@click.option(
    "--base-model",
    default=None,
    metavar="ORG/NAME",
    help="The base's Hub id, when the version names a local folder [default: recorded].",
)
@click.option(
    "--dataset", "datasets", multiple=True, metavar="ID", help="Hub dataset id (repeatable)."
)
@click.option(
    "--upload",
    is_flag=True,
    help="Then upload DEST to the Hub repository (needs the Hub and a token: HF_TOKEN or "
    "`hf auth login`).",
)
@click.option("--private", is_flag=True, help="With --upload: create the repository private.")
@registry_option
@token_option
@trust_policy_option
@json_option
def export(
    ref: str,
    dest: Path,
    repo_id,
    base_model,
    datasets,
    upload,
    private,
    registry_url,
    token,
    trust_policy,
    as_json,
) -> None:
    """Write REF to DEST as a plain PEFT folder (PeftModel.from_pretrained, vLLM, LoRAX); with
    --hub ORG/NAME, as a Hub-ready folder (DEST default: ./NAME), uploaded with --upload."""
    if dest is None:
        if repo_id is None:
            raise click.UsageError("give the folder to write: adapters export REF DEST")
        dest = Path(repo_id.rsplit("/", 1)[-1])
    reg = _open(registry_url, token, trust_policy)
    if repo_id is None:
        if base_model or datasets or upload or private:
            raise click.UsageError("--base-model, --dataset, --upload and --private need --hub")
        v = reg.resolve(ref)
        out = reg.pull(v.ref, dest)
        if as_json:
            _dump({"ref": v.ref, "digest": v.digest, "folder": str(out)})
        else:
            click.echo(str(out))
        return
    from .hub import export_for_hub, upload_folder

    done = export_for_hub(
        reg, ref, dest, repo_id=repo_id, base_model=base_model, datasets=list(datasets) or None
    )
    if upload:
        done.url = upload_folder(done, private=private)
    if as_json:
        _dump(done.to_dict())
        return
    click.echo(f"{done.folder}: {done.ref} for {done.repo_id} (base {done.base_model})")
    if done.dropped_signature:
        click.echo(
            "note: model.sig left out: the card no longer matches the signed files", err=True
        )
    if done.url:
        click.echo(f"uploaded: {done.url}")
    else:
        click.echo(
            f"upload it with: adapters export ... --upload, or `hf upload {repo_id} {done.folder}`"
        )


@click.command("import", cls=_Command)
@click.argument("source", type=SourceType())
@click.option(
    "--name", default=None, help="Adapter name [default for hf://: the repository's name]."
)
@alias_option
@registry_option
@token_option
@json_option
def import_(source, name, aliases, registry_url, token, as_json) -> None:
    """Import an existing PEFT folder (or hf://ORG/NAME[@REV]) as a new version of NAME."""
    reg = _open(registry_url, token)
    v = promote(reg, reg.push(source, name_for(source, name)), aliases)
    if as_json:
        _dump(_version_dict(v, reg.settings.serving_alias))
    else:
        click.echo(f"{v.ref} {v.digest}")
        not_live_hint(v, reg)


@click.command("ls", cls=_Command)
@click.option("--name", default=None)
@click.option("--tag", default=None, metavar="K[=V]")
@click.option("--domain", default=None)
@click.option("--base", default=None, help="Base model id or fingerprint.")
@click.option("--live", is_flag=True, help="Only live versions (holding the serving alias).")
@registry_option
@token_option
@json_option
def ls(name, tag, domain, base, live, registry_url, token, as_json) -> None:
    """List adapter versions, their aliases, and which are live: those the serving alias
    (LORAROUTE_SERVING_ALIAS, default prod) points to, the only ones model="auto" routes to."""
    reg = _open(registry_url, token)
    alias_name = reg.settings.serving_alias
    versions = reg.list(name=name, tag=tag, domain=domain, base=base)
    if live:
        versions = [v for v in versions if alias_name in v.aliases]
    if as_json:
        _dump([_version_dict(v, alias_name) for v in versions])
    else:
        version_table(versions, alias_name)


@click.command(cls=_Command)
@click.argument("ref")
@registry_option
@token_option
@json_option
def show(ref: str, registry_url, token, as_json) -> None:
    """Metadata, files, digests, lineage, eval results, promotions and model card of REF."""
    reg = _open(registry_url, token)
    v = reg.resolve(ref)
    card = reg.model_card(v.ref)
    history = gate_history(reg, v)
    if as_json:
        evals = [r.to_dict() for r in history["evals"]]
        promotions = history["promotions"]
        _dump({**_version_dict(v), "model_card": card, "evals": evals, "promotions": promotions})
        return
    from rich.markdown import Markdown
    from rich.table import Table

    out = console()
    meta = Table(title=v.ref, show_header=False)
    for key in (
        "digest",
        "aliases",
        "base_model_id",
        "base_fingerprint",
        "peft_type",
        "rank",
        "alpha",
        "target_modules",
        "dtype",
        "size",
        "domain",
        "description",
        "routing_examples",
        "tags",
        "metrics",
        "parent",
        "data_digest",
        "training_config",
        "author",
        "license",
        "created_at",
    ):
        value = getattr(v, key)
        meta.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    out.print(meta)
    files = Table(title="files")
    for col in ("path", "digest", "size"):
        files.add_column(col)
    for f in v.files:
        files.add_row(f.path, f.digest, str(f.size))
    out.print(files)
    print_gate_history(history, v)
    if card:
        out.print(Markdown(card))


@click.command(cls=_Command)
@click.argument("ref")
@click.option("--force", is_flag=True, help="Also remove versions that aliases point to.")
@registry_option
@token_option
@json_option
def rm(ref: str, force: bool, registry_url, token, as_json) -> None:
    """Remove a version (legal@3) or a whole adapter (legal). Blobs go at the next gc."""
    removed = _open(registry_url, token).rm(ref, force=force)
    if as_json:
        _dump({"removed": [_version_dict(v) for v in removed]})
        return
    for v in removed:
        click.echo(f"removed {v.ref}")


@click.command(cls=_Command)
@click.argument("ref", required=False)
@registry_option
@token_option
@trust_policy_option
@json_option
def verify(ref, registry_url, token, trust_policy, as_json) -> None:
    """Re-hash the blobs of REF (or of every version) and check its signatures (against the
    trust policy, if any); exit 1 on any problem."""
    report = _open(registry_url, token, trust_policy).verify(ref)
    if as_json:
        _dump(report.to_dict())
    else:
        for sig in report.signatures:
            for c in sig["checks"]:
                trust = {True: "trusted", False: "NOT trusted", None: "not checked (no policy)"}
                state = trust[c["trusted"]] if c["covers_files"] else "does NOT cover the files"
                click.echo(f"{sig['subject']}: signature by {c['signer'][:48]}: {state}")
            if sig["policy"] and not sig["checks"]:
                click.echo(f"{sig['subject']}: unsigned")
        for p in report.problems:
            click.echo(p, err=True)
        click.echo(
            f"checked {report.versions} version(s), {report.blobs} blob(s): "
            f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}"
        )
    if not report.ok:
        sys.exit(1)


@click.command(cls=_Command)
@click.argument("ref")
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="EC private key (PEM, P-256/384/521) to sign with.",
)
@click.option(
    "--certificate",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Signing certificate (PEM) of --key, for certificate-based signing.",
)
@click.option(
    "--chain",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA/intermediate certificate (PEM) of --certificate (repeatable).",
)
@registry_option
@token_option
@json_option
def sign(ref, key, certificate, chain, registry_url, token, as_json) -> None:
    """Sign REF's files with OpenSSF model-signing and store the signature with the version.

    An encrypted key's password comes from LORAROUTE_SIGNING_KEY_PASSWORD (never the command
    line). The bundle is model-signing's standard one: a pulled folder's model.sig also verifies with
    `model_signing verify key --signature model.sig --public_key KEY.pub FOLDER`.
    """
    from loraroute.settings import get_settings

    secret = get_settings().signing_key_password
    password = None if secret is None else secret.get_secret_value()
    reg = _open(registry_url, token)
    v = reg.resolve(ref)
    sig = reg.sign(v.ref, key=key, password=password, certificate=certificate, chain=list(chain))
    if as_json:
        _dump({"ref": v.ref, **{k: x for k, x in sig.to_dict().items() if k != "bundle"}})
    else:
        click.echo(f"signed {v.ref} as {sig.signer} ({sig.digest})")


@click.command(cls=_Command)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--grace",
    default=3600.0,
    show_default=True,
    help="Keep unreferenced blobs younger than this many seconds (a push may be using them).",
)
@registry_option
@token_option
@json_option
def gc(dry_run, grace, registry_url, token, as_json) -> None:
    """Delete blobs that no version references."""
    report = _open(registry_url, token).gc(dry_run=dry_run, grace_seconds=grace)
    if as_json:
        _dump(report.to_dict())
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(
            f"{verb} {len(report.removed)} blob(s), {report.bytes} bytes; "
            f"{report.tmp_files} temp file(s), {report.tmp_bytes} bytes"
        )


@click.group("registry", cls=_Group)
def registry_group() -> None:
    """Run an HTTP registry server, migrate its schema and manage its tokens."""


@registry_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--allow-anonymous-read", is_flag=True, help="Let requests without a token read.")
@registry_option
def serve(host, port, allow_anonymous_read, registry_url) -> None:
    """Serve the local registry (SQLite/PostgreSQL + blobs) over HTTP.

    Size limits come from LORAROUTE_REGISTRY_MAX_* (e.g. LORAROUTE_REGISTRY_MAX_BLOB_BYTES=8GiB);
    logs, access lines included, are redacted of passwords and tokens.
    """
    import logging

    import uvicorn

    from loraroute.redact import RedactingFilter, uvicorn_log_config

    from .server import create_app

    if registry_url and registry_url.startswith(("http://", "https://")):
        raise click.BadParameter(
            "serve needs a local store URL (sqlite/postgresql)", param_hint="--registry"
        )
    for handler in logging.getLogger().handlers:  # the CLI's own handler, for our loggers
        handler.addFilter(RedactingFilter())
    app = create_app(registry_url, allow_anonymous_read=allow_anonymous_read)
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=uvicorn_log_config())


@registry_group.command("migrate")
@click.option(
    "--check", is_flag=True, help="Only report the schema's revision; exit 1 if it is behind."
)
@registry_option
@json_option
def migrate(check, registry_url, as_json) -> None:
    """Upgrade the registry's database schema in place to this release's revision (data is
    kept; back up first). SQLite registries upgrade themselves when opened; PostgreSQL ones
    wait for this command."""
    from loraroute.settings import get_settings

    from .migrate import migrate_url, schema_status_url

    url = registry_url or get_settings().registry_url
    if url.startswith(("http://", "https://")):
        raise click.BadParameter(
            "migrate acts on the database (sqlite:// or postgresql://), not on a registry "
            "server; run it where the server's database is reachable",
            param_hint="--registry",
        )
    if check:
        status = schema_status_url(url)
        if as_json:
            _dump(status.to_dict())
        else:
            click.echo(f"schema: {status.describe()}; this release: revision {status.head}")
        if status.state not in ("current", "empty"):
            sys.exit(1)
        return
    before, after = migrate_url(url)
    if as_json:
        _dump({"before": before.to_dict(), "after": after.to_dict()})
    elif before.state == "current":
        click.echo(f"already at revision {after.current}")
    else:
        click.echo(f"upgraded from {before.describe()} to revision {after.current}")


@registry_group.group("token", cls=_Group)
def token_group() -> None:
    """Bearer tokens of the HTTP server (stored hashed): create, list, revoke."""


@token_group.command("create")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), required=True)
@click.option("--name", "token_name", default="", help="A label for the token.")
@click.option(
    "--prefix",
    default=None,
    metavar="PREFIX",
    help="Limit the token to adapters whose names start with PREFIX (e.g. legal).",
)
@click.option(
    "--expires",
    type=_Duration(),
    default=None,
    help="Lifetime: a number and s, m, h, d or w (e.g. 30d); default: no expiry.",
)
@registry_option
@json_option
def token_create(scope, token_name, prefix, expires, registry_url, as_json) -> None:
    """Create a token; it is printed once and only its sha256 is stored."""
    from .auth import issue_token

    token, info = issue_token(
        _open(registry_url), scope, name=token_name, prefix=prefix, expires_in=expires
    )
    if as_json:
        _dump({"token": token, **info.to_dict()})
    else:
        click.echo(token)


def _token_status(info: Any) -> str:
    from datetime import datetime, timezone

    if info.revoked_at is not None:
        return "revoked"
    if info.expires_at is not None and info.expires_at <= datetime.now(timezone.utc):
        return "expired"
    return "active"


@token_group.command("list")
@registry_option
@json_option
def token_list(registry_url, as_json) -> None:
    """List tokens: id, name, scope, prefix, created, expires, last used (never the secret)."""
    from .auth import list_tokens

    rows = list_tokens(_open(registry_url))
    if as_json:
        _dump([{**t.to_dict(), "status": _token_status(t)} for t in rows])
        return
    from rich.table import Table

    def when(dt: Any) -> str:
        return dt.strftime("%Y-%m-%d %H:%M") if dt else ""

    table = Table(title=f"{len(rows)} token(s)")
    for col in ("id", "name", "scope", "prefix", "created", "expires", "last used", "status"):
        table.add_column(col, no_wrap=col in ("id", "prefix"))
    for t in rows:
        table.add_row(
            str(t.id),
            t.name,
            t.scope,
            t.prefix or "",
            when(t.created_at),
            when(t.expires_at) or "never",
            when(t.last_used_at),
            _token_status(t),
        )
    console().print(table)


@token_group.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@registry_option
@json_option
def token_revoke(token_id, registry_url, as_json) -> None:
    """Revoke token ID (see `token list`); the server refuses it from the next request on."""
    from .auth import revoke_token

    info = revoke_token(_open(registry_url), token_id)
    if as_json:
        _dump(info.to_dict())
    else:
        click.echo(f"revoked token #{info.id} ({info.name or 'no name'}, scope {info.scope})")


def register(group: click.Group) -> None:
    """Add the registry commands to the root ``adapters`` group."""
    for cmd in (
        push,
        pull,
        ls,
        show,
        alias,
        evals_group,
        rm,
        verify,
        sign,
        gc,
        export,
        import_,
        registry_group,
    ):
        group.add_command(cmd)


__all__ = ["register"]
