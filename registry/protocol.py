"""What crosses the wire of the HTTP registry, as strict pydantic models.

The server validates requests with them (a malformed value is a 4xx); the client validates
every answer with them before using any value (:class:`VersionOut` binds a version's digest
to its file list, so a checkout path can only come from a well-formed digest). Names, digests
and file paths go through the registry's own checks (``check_name``, ``check_digest``,
``check_file_name``), so there is one rule for each.

Example::

    >>> VersionOut.model_validate(answer).to_version()  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from ._manifest import manifest_digest
from ._model_signing import MAX_SIGNATURE_BYTES
from ._text import check_json, check_text
from .blobs import check_digest
from .evals import MAX_EXAMPLES, MAX_RESULTS_PER_CALL, METRIC_RE, Comparison, EvalResult, GateReport
from .refs import MAX_VERSION, check_name, parse_ref
from .tables import AdapterVersion, FileInfo
from .validate import check_file_name

MAX_SIZE = 1 << 62  # any real byte count; the limits proper are in Limits


def _line(max_chars: int):
    return AfterValidator(lambda v: check_text(v, "value", max_chars=max_chars))


def _text(max_chars: int):
    return AfterValidator(lambda v: check_text(v, "value", max_chars=max_chars, multiline=True))


def _ref(value: str) -> str:
    parse_ref(value)
    return value


Name = Annotated[StrictStr, AfterValidator(check_name)]
AliasName = Annotated[StrictStr, AfterValidator(lambda v: check_name(v, "alias"))]
Digest = Annotated[StrictStr, AfterValidator(check_digest)]
FilePath = Annotated[StrictStr, AfterValidator(check_file_name)]
VersionNumber = Annotated[StrictInt, Field(ge=1, le=MAX_VERSION)]
Size = Annotated[StrictInt, Field(ge=0, le=MAX_SIZE)]
Line = Annotated[StrictStr, _line(512)]
Text = Annotated[StrictStr, _text(1 << 20)]
Example = Annotated[StrictStr, _text(1 << 20)]
Metric = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # a number, not a bool or text
JsonObject = Annotated[dict[str, Any], AfterValidator(lambda v: check_json(v, "value"))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntryModel(_Strict):
    """One file of a manifest."""

    path: FilePath
    digest: Digest
    size: Size

    def to_info(self) -> FileInfo:
        return FileInfo(self.path, self.digest, self.size)


def _unique_paths(files: list[FileEntryModel]) -> list[FileEntryModel]:
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"the file list names {dup!r} twice")
    return files


Files = Annotated[list[FileEntryModel], AfterValidator(_unique_paths)]


class PushMeta(_Strict):
    """Metadata a client may send with a manifest (the keywords of ``Registry.push``).

    Sizes and counts (routing examples, metadata bytes) are checked by :class:`Limits`, which
    answers 413; this model refuses what cannot be stored at all: wrong types, NUL, lone
    surrogates, control characters in one-line fields, infinite or NaN metrics.
    """

    model_config = ConfigDict(extra="forbid", frozen=False)
    domain: Line | None = None
    description: Text | None = None
    routing_examples: list[Example] | None = None
    tags: dict[Line, Annotated[StrictStr, _text(1 << 16)]] | None = None
    metrics: dict[Line, Metric] | None = None
    parent: Annotated[StrictStr, AfterValidator(_ref)] | None = None
    data_digest: Line | None = None
    training_config: JsonObject | None = None
    author: Line | None = None
    license: Line | None = None
    base_model_id: Annotated[StrictStr, _line(4096)] | None = None
    base_fingerprint: Line | None = None


class ManifestIn(_Strict):
    """``POST /v1/adapters/{name}/versions``: the files (blobs already uploaded) and metadata."""

    files: Files
    meta: PushMeta = PushMeta()
    version: VersionNumber | None = None
    # model-signing bundles (JSON text) over exactly these files, stored with the version
    # (at most MAX_SIGNATURES_PER_VERSION in registry.signing)
    signatures: list[Annotated[StrictStr, Field(max_length=MAX_SIGNATURE_BYTES)]] = Field(
        default_factory=list, max_length=32
    )


Tolerance = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class AliasIn(_Strict):
    """``PUT /v1/adapters/{name}/aliases/{alias}``: a version number or a reference; for the
    serving alias, ``force`` past the quality gate and a ``tolerance`` for this move."""

    version: VersionNumber | Annotated[StrictStr, _line(300)]
    force: StrictBool = False
    tolerance: Tolerance | None = None


Finite = Metric  # a finite number, not a bool or text


def _metric_name(value: str) -> str:
    if not METRIC_RE.fullmatch(value):
        raise ValueError(
            f"metric name {value[:80]!r} is not 1-128 characters of [A-Za-z0-9_.:/@+-]"
        )
    return value


MetricName = Annotated[StrictStr, AfterValidator(_metric_name)]


class EvalResultIn(_Strict):
    """One eval result (see :class:`loraroute.registry.evals.EvalResult`)."""

    dataset: Annotated[StrictStr, _line(256)]
    dataset_digest: Digest
    metric: MetricName
    value: Finite
    ci_low: Finite | None = None
    ci_high: Finite | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_EXAMPLES)] | None = None
    higher_is_better: StrictBool = True
    source: Annotated[StrictStr, _line(256)] | None = None
    details: JsonObject = {}

    def to_result(self) -> EvalResult:
        return EvalResult(**{k: getattr(self, k) for k in type(self).model_fields})


class EvalsIn(_Strict):
    """``POST /v1/evals?ref=REF``: results to store with the version REF names."""

    results: Annotated[list[EvalResultIn], Field(min_length=1, max_length=MAX_RESULTS_PER_CALL)]


class EvalOut(EvalResultIn):
    """A stored eval result, as the server answers it."""

    ref: Annotated[StrictStr, AfterValidator(_ref)]
    actor: Annotated[StrictStr, _line(256)] | None = None
    created_at: Annotated[datetime, Field(strict=False)]


class ComparisonOut(_Strict):
    dataset: Annotated[StrictStr, _line(256)]
    dataset_digest: Digest
    metric: MetricName
    candidate: Finite
    holder: Finite
    higher_is_better: StrictBool
    drop: Finite
    regressed: StrictBool
    candidate_ci: tuple[Finite, Finite] | None = None
    holder_ci: tuple[Finite, Finite] | None = None


class GateOut(_Strict):
    """``GET /v1/gate``: the quality gate's report on a promotion."""

    name: Name
    alias: AliasName
    candidate: VersionNumber
    holder: VersionNumber | None
    tolerance: Tolerance
    verdict: Annotated[StrictStr, _line(32)]
    comparisons: Annotated[list[ComparisonOut], Field(max_length=4096)] = []
    warnings: Annotated[list[Annotated[StrictStr, _line(4096)]], Field(max_length=4096)] = []
    refused: StrictBool = False
    forced: StrictBool = False

    def to_report(self) -> GateReport:
        data = self.model_dump()
        data["comparisons"] = [Comparison(**c) for c in data["comparisons"]]
        return GateReport(**data)


class PromotionOut(_Strict):
    """``GET /v1/promotions``: one move of the serving alias and the gate's verdict."""

    name: Name
    alias: AliasName
    from_: Annotated[StrictStr, AfterValidator(_ref)] | None = Field(None, alias="from")
    to: Annotated[StrictStr, AfterValidator(_ref)]
    verdict: Annotated[StrictStr, _line(32)]
    forced: StrictBool
    tolerance: Tolerance
    report: JsonObject
    actor: Annotated[StrictStr, _line(256)] | None = None
    created_at: Annotated[datetime, Field(strict=False)]


class VersionOut(_Strict):
    """A version as the server answers it; checked in full before the client uses it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: Name
    version: VersionNumber
    digest: Digest
    created_at: Annotated[datetime, Field(strict=False)]
    base_model_id: Annotated[StrictStr, _line(4096)] | None = None
    base_fingerprint: Line | None = None
    peft_type: Line | None = None
    rank: Annotated[StrictInt, Field(ge=0, le=1 << 20)] | None = None
    alpha: Annotated[float, Field(strict=False, allow_inf_nan=False)] | None = None
    target_modules: Annotated[list[Line], Field(max_length=4096)] = []
    dtype: Line | None = None
    size: Size = 0
    domain: Line | None = None
    description: Text | None = None
    routing_examples: list[Example] = []
    tags: dict[Line, Annotated[StrictStr, _text(1 << 16)]] = {}
    metrics: dict[Line, Annotated[float, Field(strict=False, allow_inf_nan=False)]] = {}
    parent: Annotated[StrictStr, AfterValidator(_ref)] | None = None
    data_digest: Line | None = None
    training_config: JsonObject = {}
    author: Line | None = None
    license: Line | None = None
    aliases: list[AliasName] = []
    files: Files = []

    @model_validator(mode="after")
    def _digest_names_the_files(self) -> VersionOut:
        # the digest names the content: a checkout folder named after it holds these files
        actual = manifest_digest([f.to_info() for f in self.files])
        if actual != self.digest:
            raise ValueError(
                f"digest {self.digest} is not the digest of the listed files ({actual})"
            )
        return self

    def to_version(self) -> AdapterVersion:
        data = {k: getattr(self, k) for k in type(self).model_fields}
        data["files"] = [f.to_info() for f in self.files]
        for key in ("target_modules", "routing_examples", "aliases"):
            data[key] = list(data[key])
        for key in ("tags", "metrics", "training_config"):
            data[key] = dict(data[key])
        return AdapterVersion.from_dict(data)


class RevisionOut(_Strict):
    revision: Annotated[StrictStr, _line(64)]


class ModelCardOut(_Strict):
    model_card: StrictStr | None


class VerifyOut(_Strict):
    versions: Size
    blobs: Size
    problems: list[Annotated[StrictStr, _line(4096)]]
    ok: StrictBool | None = None
    # the server's own reading of signatures; a client judges them itself under its policy
    signatures: list[JsonObject] | None = None


class GcOut(_Strict):
    dry_run: StrictBool
    removed: list[Digest]
    bytes: Size
    kept_recent: Size
    tmp_files: Size = 0
    tmp_bytes: Size = 0


class ErrorOut(BaseModel):
    """An error answer: ``{"error": "<RegistryError subclass>", "detail": "<message>"}``."""

    model_config = ConfigDict(extra="ignore")
    error: StrictStr
    detail: StrictStr


__all__ = [
    "AliasIn",
    "ComparisonOut",
    "ErrorOut",
    "EvalOut",
    "EvalResultIn",
    "EvalsIn",
    "FileEntryModel",
    "GateOut",
    "GcOut",
    "ManifestIn",
    "ModelCardOut",
    "PromotionOut",
    "PushMeta",
    "RevisionOut",
    "VerifyOut",
    "VersionOut",
]
