"""The local registry's eval results and quality gate (:mod:`.evals`): the methods
:class:`~loraroute.registry.local.Registry` gets from :class:`EvalMethods`."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from loraroute.settings import Settings

from ._db import bump_revision
from ._evals_store import check_gate, history, promotions, store_results
from .errors import AdapterNotFoundError, VersionConflictError
from .evals import EvalResult, GateReport, as_results
from .refs import Ref, check_name, check_version, parse_ref, parse_version
from .tables import Adapter, Version


def alias_target(name: str, version: int | str) -> str:
    """The reference ``alias_set(name, alias, version)`` points at."""
    if isinstance(version, int) and not isinstance(version, bool):
        check_version(version)
    target = str(version)
    if parse_version(target) is not None or target.startswith("sha256:"):
        return f"{name}@{target}"
    if "@" in target or ":" in target:
        return target
    return f"{name}:{target}"  # another alias of the same adapter, e.g. promote staging to prod


class EvalMethods:
    """Eval results of versions and the gate's view of a promotion (a mixin of Registry)."""

    settings: Settings
    _read: Engine
    _write: Engine

    if TYPE_CHECKING:

        def _find(self, s: Session, ref: str | Ref) -> tuple[Adapter, Version]: ...

        def _no_adapter(self, s: Session, name: str) -> AdapterNotFoundError: ...

    def record_eval(
        self, ref: str, results: Any, *, source: str | None = None, actor: str | None = None
    ) -> builtins.list[EvalResult]:
        """Store eval results with the version ``ref`` names: an :class:`EvalResult`, a dict
        of its fields, or a list of either (``source``: what made them, where unset)."""
        checked = as_results(results, source=source)
        with Session(self._write) as s:
            bump_revision(s)
            adapter, v = self._find(s, ref)
            out = store_results(s, v, f"{adapter.name}@{v.number}", checked, actor)
            s.commit()
        return out

    def evals(self, ref: str) -> builtins.list[EvalResult]:
        """Eval results, oldest first: of one version (``legal@3``, ``legal:prod``) or, for a
        bare name, of every version of the adapter."""
        r = parse_ref(ref)
        with Session(self._read) as s:
            if r == Ref(r.name):
                adapter = s.exec(select(Adapter).where(Adapter.name == r.name)).first()
                if adapter is None:
                    raise self._no_adapter(s, r.name)
                return history(s, adapter)
            adapter, v = self._find(s, r)
            return history(s, adapter, v)

    def gate_check(
        self,
        name: str,
        version: int | str,
        *,
        alias: str | None = None,
        tolerance: float | None = None,
    ) -> GateReport:
        """What the quality gate says of pointing ``alias`` (default: the serving alias) at
        ``version``; nothing moves."""
        alias = check_name(alias or self.settings.serving_alias, "alias")
        with Session(self._read) as s:
            adapter, v = self._find(s, alias_target(name, version))
            if adapter.name != name:
                raise VersionConflictError(f"{version!r} is not a version of {name!r}")
            return check_gate(s, self.settings, adapter, v, alias, tolerance)

    def promotions(self, name: str) -> builtins.list[dict[str, Any]]:
        """Moves of ``name``'s serving alias with the gate's verdicts (forced ones too)."""
        check_name(name)
        with Session(self._read) as s:
            return promotions(s, name)


__all__ = ["EvalMethods", "alias_target"]
