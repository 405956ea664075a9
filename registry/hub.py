"""Hugging Face Hub in and out.

In: a push takes ``hf://org/name[@revision]`` (resolved through the local Hugging Face cache,
or downloaded when the Hub is reachable) or a snapshot folder of that cache
(``models--org--name/snapshots/<commit>/``, whose files are symlinks into ``blobs/``). Those
links are followed only into the repository's own ``blobs/`` folder; every other symlink is
still refused (:func:`loraroute.registry.validate.scan_folder`).

Out: :func:`export_for_hub` writes a version as a Hub-ready folder (the adapter files and a
model card whose YAML front matter names the base by its Hub id, ``library_name: peft``, tags,
datasets and metrics, and no local paths); :func:`upload_folder` uploads it.

Example::

    >>> reg.push("hf://my-org/cooking-lora@main", "cooking")  # doctest: +SKIP
    >>> export_for_hub(reg, "cooking:prod", "out/cooking", repo_id="my-org/cooking")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    AdapterNotFoundError,
    InvalidReferenceError,
    InvalidRequestError,
    RemoteError,
)
from .validate import (
    CONFIG_NAME,
    SIGNATURE_NAME,
    WEIGHTS_NAME,
    AdapterInfo,
    scan_folder,
    validate_files,
)

if TYPE_CHECKING:
    from .tables import AdapterVersion

logger = logging.getLogger(__name__)

SCHEME = "hf://"
CARD_NAME = "README.md"
# what a push takes from a Hub repository: an adapter repo often also holds tokenizer files
# and a pickled training_args.bin, which the registry neither needs nor accepts
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, SIGNATURE_NAME)
_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,255}")
_FORM = "hf://org/name or hf://org/name@revision"


@dataclass(frozen=True)
class HubRef:
    """A Hub model repository and an optional revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return SCHEME + self.repo_id + (f"@{self.revision}" if self.revision else "")

    @property
    def name(self) -> str:
        """The repository's name: a registry name by default."""
        return self.repo_id.split("/")[-1]


def parse_hub_ref(text: str) -> HubRef | None:
    """``hf://org/name[@revision]`` parsed (``hf://models/org/name`` also); None when ``text``
    is not an ``hf://`` reference; :class:`InvalidReferenceError` when it is a malformed one."""
    if not isinstance(text, str) or not text.startswith(SCHEME):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    body = text[len(SCHEME) :].removeprefix("models/")
    repo_id, _, revision = body.partition("@")
    problem = None
    if repo_id.count("/") != 1:
        problem = "the repository must be 'org/name'"
    elif "@" in text and not (_REVISION_RE.fullmatch(revision) and ".." not in revision):
        problem = "the revision must be a branch, tag or commit (letters, digits, '._/-')"
    else:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            problem = str(exc).split("\n")[0]
    if problem:
        raise InvalidReferenceError(f"invalid Hub reference {text[:200]!r}: {problem}; use {_FORM}")
    return HubRef(repo_id, revision or None)


def cache_blobs(folder: Path) -> Path | None:
    """The ``blobs/`` folder of the Hugging Face cache repository whose snapshot ``folder`` is
    (``.../models--org--name/snapshots/<commit>``), or None for any other folder."""
    folder = Path(folder).absolute()
    repo = folder.parent.parent
    if (
        folder.parent.name == "snapshots"
        and repo.name.startswith("models--")
        and (repo / "blobs").is_dir()
        and not (repo / "blobs").is_symlink()
    ):
        return repo / "blobs"
    return None


def snapshot_origin(folder: Path) -> str | None:
    """``hf://org/name@<commit>`` for a Hugging Face cache snapshot folder, else None."""
    from loraroute.models import hub_id_of_snapshot

    repo_id = hub_id_of_snapshot(Path(folder).absolute())
    return f"{SCHEME}{repo_id}@{Path(folder).name}" if repo_id else None


def fetch(ref: HubRef, *, cache_dir: str | Path | None = None) -> Path:
    """The snapshot folder of ``ref``'s adapter files: from the local Hugging Face cache, or
    downloaded into it when the Hub is reachable (``HF_HUB_OFFLINE=1``: the cache only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            allow_patterns=list(ADAPTER_FILES),
            cache_dir=cache_dir,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise AdapterNotFoundError(
            f"{ref} is not on the Hugging Face Hub ({type(exc).__name__}); check the name and "
            f"revision, and for a private repository log in (`hf auth login`)"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise AdapterNotFoundError(
            f"{ref} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({type(exc).__name__}); download it where the Hub is reachable (`hf download "
            f"{ref.repo_id}`), point HF_HUB_CACHE at a cache that holds it, or push its folder"
        ) from None
    except HfHubHTTPError as exc:
        raise RemoteError(f"the Hugging Face Hub failed on {ref}: {exc}") from None
    return Path(folder)


def read_source(source: str | Path) -> tuple[AdapterInfo, str | None]:
    """Validate what a push names: an ``hf://`` reference, a Hugging Face cache snapshot
    folder, or any other folder. Returns the validated files and, for the first two, their
    origin (``hf://org/name@<commit>``), which the push records as the tag ``source``.

    From a Hub repository only the adapter's files are taken (:data:`ADAPTER_FILES`); any
    other folder is taken whole, and a file the registry refuses (a pickle) refuses it."""
    from .validate import validate_folder

    ref = parse_hub_ref(source) if isinstance(source, str) else None
    folder = fetch(ref) if ref is not None else Path(source)
    blobs = cache_blobs(folder)
    if ref is None and blobs is None:
        return validate_folder(folder), None
    label = str(ref) if ref is not None else folder.name
    found = scan_folder(folder, links_within=blobs)
    files = {rel: path for rel, path in found.items() if rel in ADAPTER_FILES}
    skipped = sorted(set(found) - set(files))
    if skipped:
        logger.info("%s: taking the adapter files only, not %s", label, ", ".join(skipped))
    signature = files.pop(SIGNATURE_NAME, None)
    info = validate_files(files)
    info.signature = signature
    return info, snapshot_origin(folder) or (str(ref) if ref is not None else None)


def with_origin(meta: dict[str, Any], origin: str | None) -> dict[str, Any]:
    """Push metadata with ``tags["source"] = origin`` (a tag the caller gave wins)."""
    if not origin:
        return meta
    tags = dict(meta.get("tags") or {})
    tags.setdefault("source", origin)
    return {**meta, "tags": tags}


# -- out ------------------------------------------------------------------------------------
def hub_base_id(name: str | None, label: str) -> str:
    """The Hub id of a base model as a version records it: a Hub id as is, the embedded
    default's source model, a Hugging Face cache snapshot's repository; a local folder has none
    (InvalidRequestError: pass the base's Hub id)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from loraroute.models import SMOLLM2_HUB_ID, SMOLLM2_NAME, hub_id_of_snapshot

    if name and name.lower() in (SMOLLM2_NAME, SMOLLM2_HUB_ID.lower()):
        return SMOLLM2_HUB_ID
    if name and name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            validate_repo_id(name)
            return name
        except HFValidationError:
            pass
    if name and Path(name).is_absolute() and (found := hub_id_of_snapshot(Path(name))):
        return found
    what = "no base model" if not name else f"the local base model folder {Path(name).name!r}"
    raise InvalidRequestError(
        f"{label} records {what}, which the Hub cannot name; pass the base's Hub id "
        f"(--base-model ORG/NAME, or base_model='org/name')"
    )


def _portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """Training settings fit for a public card: numbers, flags and short words (a path, such
    as the folder a run started from, is left out)."""

    def plain(value: Any) -> bool:
        if isinstance(value, bool | int | float) or value is None:
            return True
        if isinstance(value, str):
            return len(value) <= 64 and "/" not in value and "\\" not in value
        if isinstance(value, list):
            return all(plain(v) and not isinstance(v, list) for v in value)
        return False

    return {k: v for k, v in sorted(config.items()) if plain(v)}


_BODY = """
# {{ model_name }}

{{ summary }}

A LoRA adapter for [{{ base_model }}](https://huggingface.co/{{ base_model }}), exported from a
[loraroute](https://pypi.org/project/loraroute/) registry as `{{ ref }}` (`{{ digest }}`).

## Use it

```python
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("{{ repo_id }}")
```

or with loraroute: `adapters push hf://{{ repo_id }} --name {{ name }}`.
{% if metric_rows %}
## Metrics

| metric | value |
| --- | --- |
{% for k, v in metric_rows %}| {{ k }} | {{ v }} |
{% endfor %}{% endif %}{% if config_rows %}
## Training

| setting | value |
| --- | --- |
{% for k, v in config_rows %}| {{ k }} | {{ v }} |
{% endfor %}{% endif %}
{% if fingerprint %}Trained on the base whose loraroute fingerprint (config and every tensor) is
`{{ fingerprint }}`.{% endif %}
"""


# PEFT's save_pretrained writes a card of placeholders; such a card is replaced, not kept
_BOILERPLATE = "[More Information Needed]"
_QUALITY = ("loss", "perplexity", "accuracy", "f1", "bleu", "rouge", "exact_match")


def _quality(metric: str) -> bool:
    """A measure of how good the adapter is (``eval_loss``), not of how it ran (``epochs``)."""
    return metric.startswith("eval_") or any(word in metric for word in _QUALITY)


def model_card(
    v: AdapterVersion,
    *,
    repo_id: str,
    base_model: str,
    datasets: list[str] | None = None,
    existing: str | None = None,
) -> Any:
    """A ``huggingface_hub.ModelCard`` for version ``v``: the card it carries (``existing``)
    with its metadata completed, else (none, or PEFT's placeholder card) a new one."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    tags = ["lora", "peft", "loraroute", *([v.domain] if v.domain else [])]
    # the front matter's metrics are quality measures; the body's table lists them all
    metrics = {k: float(x) for k, x in sorted(v.metrics.items()) if _quality(k)}
    eval_results = (
        [
            EvalResult(
                task_type="text-generation",
                dataset_type=datasets[0],
                dataset_name=datasets[0],
                metric_type=k,
                metric_value=x,
            )
            for k, x in metrics.items()
        ]
        if datasets and metrics
        else None
    )
    if existing and _BOILERPLATE not in existing:
        card = ModelCard(existing, ignore_metadata_errors=True)
        data: Any = card.data  # a ModelCardData (ModelCard.data is typed as its base)
        data.base_model = base_model
        data.library_name = "peft"
        data.tags = sorted(set(data.tags or []) | set(tags))
        if datasets:
            data.datasets = sorted(set(data.datasets or []) | set(datasets))
        if metrics:
            data.metrics = sorted(set(data.metrics or []) | set(metrics))
        if eval_results and not data.eval_results:
            data.eval_results, data.model_name = eval_results, repo_id.split("/")[-1]
        if v.license and not data.license:
            data.license = v.license
        return card
    data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="text-generation",
        license=v.license,
        tags=tags,
        datasets=datasets or None,
        metrics=list(metrics) or None,
        eval_results=eval_results,
        model_name=repo_id.split("/")[-1],
    )
    return ModelCard.from_template(
        data,
        template_str="---\n{{ card_data }}\n---\n" + _BODY,
        model_name=repo_id.split("/")[-1],
        summary=v.description or (f"Domain: {v.domain}." if v.domain else ""),
        base_model=base_model,
        ref=v.ref,
        digest=v.digest,
        repo_id=repo_id,
        name=v.name,
        metric_rows=[(k, f"{float(x):.4g}") for k, x in sorted(v.metrics.items())],
        config_rows=[
            (k, json.dumps(x) if isinstance(x, list) else x)
            for k, x in _portable_config(v.training_config).items()
        ],
        fingerprint=v.base_fingerprint,
    )


@dataclass
class HubExport:
    """What :func:`export_for_hub` wrote."""

    folder: Path
    repo_id: str
    base_model: str
    ref: str
    dropped_signature: bool = False
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "repo_id": self.repo_id,
            "base_model": self.base_model,
            "ref": self.ref,
            "dropped_signature": self.dropped_signature,
            "url": self.url,
        }


def export_for_hub(
    registry: Any,
    ref: str,
    dest: str | Path,
    *,
    repo_id: str,
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> HubExport:
    """Write ``ref`` into ``dest`` (new or empty) as a Hub-ready folder: its verified files,
    ``adapter_config.json`` naming the base by its Hub id, and ``README.md`` a model card with
    YAML front matter. ``base_model`` (a Hub id) is needed when the version names a local
    folder as its base.

    Example: ``export_for_hub(reg, "cooking:prod", "out/cooking", repo_id="me/cooking")``
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InvalidRequestError(f"Hub repository {repo_id!r} is not valid: {exc}") from None
    if repo_id.count("/") != 1:
        raise InvalidRequestError(f"Hub repository {repo_id!r} must be 'org/name'")
    v = registry.resolve(ref)
    if base_model:
        base = hub_base_id(base_model, "the base model given")
    else:  # decided before anything is written
        base = hub_base_id(v.base_model_id, v.ref)
    folder = Path(registry.pull(v.ref, dest))
    config_path = folder / CONFIG_NAME
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path") != base:
        config["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card_path = folder / CARD_NAME
    existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    card = model_card(v, repo_id=repo_id, base_model=base, datasets=datasets, existing=existing)
    card.save(str(card_path))
    # the card (and perhaps the config) changed, so a signature over the stored files no
    # longer covers the folder; sign the export itself if it should carry one
    signature = folder / SIGNATURE_NAME
    dropped = signature.is_file()
    signature.unlink(missing_ok=True)
    return HubExport(folder, repo_id, base, v.ref, dropped_signature=dropped)


def upload_folder(export: HubExport, *, token: str | None = None, private: bool = False) -> str:
    """Upload an exported folder to its Hub repository (created if missing); returns the
    commit's URL. The token defaults to huggingface_hub's own (``HF_TOKEN``, ``hf auth login``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(export.repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(export.folder),
            repo_id=export.repo_id,
            commit_message=f"Upload {export.ref} from a loraroute registry",
        )
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise RemoteError(
            f"the folder for {export.repo_id} is written, but uploading it failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); upload it "
            f"later with `hf upload {export.repo_id} <folder>` where the Hub is reachable and "
            f"you are logged in"
        ) from None
    return str(getattr(info, "commit_url", info))


__all__ = [
    "ADAPTER_FILES",
    "HubExport",
    "HubRef",
    "cache_blobs",
    "export_for_hub",
    "fetch",
    "hub_base_id",
    "model_card",
    "parse_hub_ref",
    "read_source",
    "snapshot_origin",
    "upload_folder",
    "with_origin",
]
