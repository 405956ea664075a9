"""Results of ``verify`` and ``gc``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class VerifyReport:
    """``problems`` is empty when every checked blob hashes to its digest and no signature is
    broken (or, under a trust policy, every version has a trusted one); ``signatures`` holds
    the signature checks of each signed version (``SignatureReport.to_dict()``)."""

    versions: int = 0
    blobs: int = 0
    problems: list[str] = field(default_factory=list)
    signatures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_signatures(self, report: Any) -> None:
        """Record a version's ``SignatureReport``; a failing one is a problem."""
        if report.checks or report.policy:
            self.signatures.append(report.to_dict())
        if not report.ok:
            self.problems.append(report.reason)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class GcReport:
    """What ``gc`` removed (or, in a dry run, would remove): unreferenced blobs and the temp
    files that killed uploads left behind."""

    dry_run: bool = False
    removed: list[str] = field(default_factory=list)  # digests removed (or, dry run, removable)
    bytes: int = 0  # of the removed blobs
    kept_recent: int = 0
    tmp_files: int = 0  # temp files (or folders) of interrupted writes
    tmp_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["GcReport", "VerifyReport"]
