"""Combine two LoRA adapters with peft's ``add_weighted_adapter`` and push the result."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ..errors import IncompatibleAdapterError, TrainingError

logger = logging.getLogger(__name__)


def merge_adapters(
    base_path: Path,
    first: Path,
    second: Path,
    dest: Path,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    combination: str = "auto",
    base_fingerprints: tuple[str | None, str | None] = (None, None),
    settings: Any = None,
) -> Path:
    """Write the weighted combination of two adapter folders on ``base_path`` into ``dest``.

    ``combination="auto"`` is ``cat``: the merged delta is exactly
    ``w1 * s1 * B1 @ A1 + w2 * s2 * B2 @ A2`` and the ranks add up. ``linear`` (on request,
    equal ranks and targets) keeps the rank but is peft's product of the sqrt(w*s)-weighted sums
    of the A's and of the B's, which carries the cross terms ``B1 @ A2`` and ``B2 @ A1``.

    ``base_fingerprints`` are the fingerprints the adapters were trained on, when the caller
    knows them (the registry records them); otherwise each folder's own record is used (its
    training record, or the local base folder named in its config). An adapter recorded on
    another base is refused.
    """
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraroute.registry import InvalidAdapterError, read_adapter_config

    try:  # the one reader of adapter configs, the registry's
        cfgs = [read_adapter_config(Path(p) / "adapter_config.json") for p in (first, second)]
    except InvalidAdapterError as exc:
        raise IncompatibleAdapterError(f"cannot merge: {exc}") from exc
    _check_bases(base_path, (Path(first), Path(second)), cfgs, base_fingerprints, settings)
    same = cfgs[0].r == cfgs[1].r and sorted(cfgs[0].target_list) == sorted(cfgs[1].target_list)
    if combination == "auto":
        combination = "cat"
    if combination == "linear" and not same:
        raise IncompatibleAdapterError(
            f"linear merge needs equal ranks and targets, got r={cfgs[0].r} "
            f"{cfgs[0].target_list} and r={cfgs[1].r} {cfgs[1].target_list}; "
            f"use --combination cat or svd"
        )
    model = AutoModelForCausalLM.from_pretrained(str(base_path))
    peft_model = PeftModel.from_pretrained(model, str(first), adapter_name="first")
    peft_model.load_adapter(str(second), adapter_name="second")
    try:
        peft_model.add_weighted_adapter(
            ["first", "second"], list(weights), "merged", combination_type=combination
        )
    except ValueError as exc:
        raise IncompatibleAdapterError(f"cannot merge {first} and {second}: {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp, selected_adapters=["merged"])
        src = Path(tmp) / "merged"
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            (dest / f.name).write_bytes(f.read_bytes())
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = cfgs[0].base_model_name_or_path
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return dest


def _recorded_base(folder: Path, config: Any, settings: Any) -> str | None:
    """The fingerprint of the base ``folder``'s adapter was trained on, if the folder says."""
    import json

    from loraroute.models import fingerprint

    from .config import TRAINING_FILE

    record = folder / TRAINING_FILE
    if record.is_file():
        try:
            recorded = json.loads(record.read_text()).get("base_fingerprint")
        except (OSError, ValueError, AttributeError) as exc:
            raise IncompatibleAdapterError(f"cannot read {record}: {exc}") from exc
        if isinstance(recorded, str) and recorded:
            return recorded
    named = Path(config.base_model_name_or_path or "").expanduser()
    if config.base_model_name_or_path and named.is_dir() and any(named.glob("*.safetensors")):
        return fingerprint(named, settings=settings)
    return None


def _check_bases(
    base_path: Path,
    folders: tuple[Path, Path],
    cfgs: list[Any],
    given: tuple[str | None, str | None],
    settings: Any,
) -> None:
    """Refuse an adapter whose recorded base is not ``base_path``."""
    from loraroute.models import fingerprint

    base_fp: str | None = None
    for folder, cfg, recorded in zip(folders, cfgs, given, strict=True):
        recorded = recorded or _recorded_base(folder, cfg, settings)
        if recorded is None:
            logger.warning("adapter %s records no base; merging it onto %s", folder, base_path)
            continue
        base_fp = base_fp or fingerprint(base_path, settings=settings)
        if recorded != base_fp:
            raise IncompatibleAdapterError(
                f"adapter {folder} was trained on base {recorded}, but the base to merge on "
                f"({base_path}) is {base_fp}; merge adapters on the base they were trained on"
            )


def merge_from_registry(
    first: str,
    second: str,
    name: str,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    combination: str = "auto",
    registry: Any = None,
    token: str | None = None,
    domain: str | None = None,
    description: str | None = None,
    settings: Any = None,
) -> Any:
    """Merge registry adapters ``first`` and ``second`` and push ``name``.

    ``registry`` is a registry object or URL (``None``: the settings' registry).
    Lineage: ``parent`` is the first adapter's ref, tag ``merged_from`` holds ``"a@1,b@2"`` and
    ``training_config["merge"]`` the refs, weights and combination type.
    """
    from loraroute.models import resolve_base_model
    from loraroute.registry import open_registry
    from loraroute.settings import get_settings

    settings = settings or get_settings()
    reg = (
        open_registry(registry, token=token, settings=settings)
        if registry is None or isinstance(registry, str)
        else registry
    )
    a, b = reg.resolve(first), reg.resolve(second)
    if a.base_fingerprint != b.base_fingerprint:
        raise IncompatibleAdapterError(
            f"adapters {a.ref} and {b.ref} were trained on different bases "
            f"({a.base_fingerprint} vs {b.base_fingerprint}); only adapters of one base merge"
        )
    if not a.base_model_id:
        raise TrainingError(
            f"adapter {a.ref} records no base_model_id; cannot load its base to merge"
        )
    base = resolve_base_model(a.base_model_id, settings=settings)
    with tempfile.TemporaryDirectory() as tmp:
        out = merge_adapters(
            base.path,
            reg.local_path(a),
            reg.local_path(b),
            Path(tmp) / name,
            weights=weights,
            combination=combination,
            base_fingerprints=(a.base_fingerprint, b.base_fingerprint),
            settings=settings,
        )
        seen: dict[str, None] = {}
        for ex in list(a.routing_examples or []) + list(b.routing_examples or []):
            seen.setdefault(ex, None)
        return reg.push(
            out,
            name,
            domain=domain,
            description=description or f"merge of {a.ref} and {b.ref}",
            routing_examples=list(seen),
            # the registry's parent is one resolvable ref: the first; both go in the tag
            parent=a.ref,
            tags={"merged_from": f"{a.ref},{b.ref}"},
            training_config={
                "merge": {
                    "adapters": [a.ref, b.ref],
                    "weights": list(weights),
                    "combination": combination,
                }
            },
            base_model_id=a.base_model_id,
            base_fingerprint=a.base_fingerprint,
        )
