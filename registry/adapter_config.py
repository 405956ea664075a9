"""The one reader of PEFT LoRA ``adapter_config.json`` files.

:class:`AdapterConfig` is a pydantic model of the fields loraroute serves, checked strictly
(``r: "4"`` or ``r: true`` are refused, not coerced); keys it does not know are kept. It also
carries PEFT's rules for which module a config targets and with which rank and alpha, so that
the registry, the runtime and the load endpoint read a config the same way.

User patterns (a ``target_modules`` regex, ``rank_pattern`` keys) run with the ``regex``
package under a timeout, so a hostile pattern cannot stall a server.

Example::

    >>> cfg = read_adapter_config(b'{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}')
    >>> cfg.rank_for("model.layers.0.self_attn.q_proj"), cfg.lora_alpha
    (8, 8.0)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import regex
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import InvalidAdapterError

CONFIG_NAME = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20
MAX_PATTERN_CHARS = 1024
PATTERN_TIMEOUT_S = 0.05
PEFT_DEFAULT_ALPHA = 8.0  # peft.LoraConfig's default when a config omits lora_alpha

# Keys whose (truthy) value changes what the adapter computes in ways the runtime does not
# implement. VeLoRA (velora_config) only changes the backward pass, so it is served.
_REFUSED: dict[str, str] = {
    "use_dora": "DoRA adds a magnitude vector the runtime does not apply",
    "fan_in_fan_out": "fan_in_fan_out stores transposed weights (Conv1D bases)",
    "modules_to_save": "modules_to_save replaces whole base modules",
    "lora_bias": "lora_bias adds a bias to lora_B",
    "layer_replication": "layer_replication changes the base model's layers",
    "target_parameters": "target_parameters adapts raw parameters, not linear modules",
    "trainable_token_indices": "trainable_token_indices changes embedding rows",
    "use_qalora": "QALoRA pools the input before lora_A",
    "alora_invocation_tokens": "aLoRA activates only after invocation tokens",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "arrow_config": "Arrow routes between several LoRA experts",
    "kasa_config": "KaSA inserts a singular-value diagonal between A and B",
    "monteclora_config": "MonteCLoRA samples its weights",
}


def show(value: Any, limit: int = 60) -> str:
    """A short repr of an untrusted value for an error message."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _err(message: str) -> PydanticCustomError:
    return PydanticCustomError("loraroute", message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _check_pattern(field: str, pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise _err(f"{field} entry {show(pattern)} must be a non-empty string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise _err(f"{field} entry {show(pattern)} is longer than {MAX_PATTERN_CHARS} characters")
    try:
        regex.compile(pattern)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise _err(
            f"{field} entry {show(pattern)} is not a valid regular expression ({exc})"
        ) from None
    return pattern


def _str_or_list(field: str, v: Any, *, allow_none: bool, what: str) -> Any:
    if v is None and allow_none:
        return None
    if isinstance(v, str):
        return _check_pattern(field, v)
    if isinstance(v, list) and (v or allow_none):
        for item in v:
            if not isinstance(item, str) or not item or len(item) > MAX_PATTERN_CHARS:
                raise _err(f"{field} entry {show(item)} must be a non-empty module name")
        return v
    raise _err(f"{field} is {show(v)}; it must be {what}")


def _match(pattern: str, text: str, field: str, *, suffix: bool) -> bool:
    """PEFT's matching: ``re.fullmatch`` (target_modules as a string) or the pattern as a
    dotted suffix (``rank_pattern``/``alpha_pattern`` keys), under a timeout."""
    expr = rf"(.*\.)?({pattern})$" if suffix else pattern
    try:
        m = (regex.match if suffix else regex.fullmatch)(expr, text, timeout=PATTERN_TIMEOUT_S)
    except TimeoutError as exc:
        raise InvalidAdapterError(
            f"{CONFIG_NAME}: {field} pattern {show(pattern)} takes too long to match module "
            f"names; use plain module names such as ['q_proj', 'v_proj']"
        ) from exc
    except (regex.error, ValueError) as exc:
        raise InvalidAdapterError(
            f"{CONFIG_NAME}: {field} pattern {show(pattern)} is not a valid regular expression"
        ) from exc
    return m is not None


class AdapterConfig(BaseModel):
    """The fields of a PEFT LoRA ``adapter_config.json`` that loraroute serves.

    Unknown keys are kept (``model_extra``); features the runtime does not implement
    (DoRA, ``bias``, ``fan_in_fan_out``, ``modules_to_save``, other LoRA variants) are refused.

    Example::

        >>> AdapterConfig.model_validate({"peft_type": "LORA", "r": 4, "target_modules": "q"}).r
        4
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    peft_type: str
    r: int
    lora_alpha: float = PEFT_DEFAULT_ALPHA
    target_modules: list[str] | str
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    use_rslora: bool = False
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    base_model_name_or_path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _object_and_features(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _err(f"{CONFIG_NAME} must hold a JSON object, got {type(data).__name__}")
        for key, why in _REFUSED.items():
            if data.get(key):
                raise _err(
                    f"{key} is {show(data[key])}, which loraroute does not serve ({why}); "
                    f"retrain with plain LoRA"
                )
        bias = data.get("bias")
        if bias not in (None, "none"):
            raise _err(
                f"bias is {show(bias)}, which loraroute does not serve (only 'none'); retrain "
                f"with bias='none'"
            )
        return data

    @field_validator("peft_type", mode="before")
    @classmethod
    def _peft_type(cls, v: Any) -> str:
        if v != "LORA":
            raise _err(f"peft_type is {show(v)}; loraroute serves only 'LORA' adapters")
        return v

    @field_validator("r", mode="before")
    @classmethod
    def _rank(cls, v: Any) -> int:
        if not _is_int(v) or v < 1:
            raise _err(
                f"r is {show(v)}; it must be a positive integer such as 8 (not a string or "
                f"a boolean)"
            )
        return v

    @field_validator("lora_alpha", mode="before")
    @classmethod
    def _alpha(cls, v: Any) -> float:
        if not _is_number(v) or v <= 0:
            raise _err(f"lora_alpha is {show(v)}; it must be a positive number such as 16")
        return float(v)

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        return _str_or_list(
            "target_modules",
            v,
            allow_none=False,
            what="a non-empty list of module names such as ['q_proj', 'v_proj'] or a regex",
        )

    @field_validator("exclude_modules", "layers_pattern", mode="before")
    @classmethod
    def _optional_patterns(cls, v: Any, info: Any) -> Any:
        return _str_or_list(
            info.field_name, v, allow_none=True, what="null, a list of names or a regex"
        )

    @field_validator("rank_pattern", "alpha_pattern", mode="before")
    @classmethod
    def _patterns(cls, v: Any, info: Any) -> Any:
        field = info.field_name
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise _err(f"{field} is {show(v)}; it must be an object of pattern -> value")
        for key, value in v.items():
            _check_pattern(field, key)
            ok = _is_int(value) if field == "rank_pattern" else _is_number(value)
            if not ok or value <= 0:
                kind = "a positive integer" if field == "rank_pattern" else "a positive number"
                raise _err(f"{field}[{show(key)}] is {show(value)}; it must be {kind}")
        return dict(v)

    @field_validator("use_rslora", mode="before")
    @classmethod
    def _rslora(cls, v: Any) -> bool:
        if v is None:
            return False
        if not isinstance(v, bool):
            raise _err(f"use_rslora is {show(v)}; it must be true or false")
        return v

    @field_validator("layers_to_transform", mode="before")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [] if v is None else [v]
        if not all(_is_int(i) and i >= 0 for i in items):
            raise _err(
                f"layers_to_transform is {show(v)}; it must be null, a layer index or a list "
                f"of layer indices"
            )
        return v

    @field_validator("base_model_name_or_path", mode="before")
    @classmethod
    def _base(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise _err(f"base_model_name_or_path is {show(v)}; it must be a string or null")
        return v or None

    # -- PEFT's rules -----------------------------------------------------------------------
    @property
    def target_list(self) -> list[str]:
        """``target_modules`` as a sorted list (a regex string is a one-item list)."""
        t = self.target_modules
        return [t] if isinstance(t, str) else sorted(set(t))

    def _excluded(self, module: str) -> bool:
        ex = self.exclude_modules
        if not ex:
            return False
        if isinstance(ex, str):
            return _match(ex, module, "exclude_modules", suffix=False)
        return module in ex or any(module.endswith(f".{e}") for e in ex)

    def _layer_ok(self, module: str) -> bool:
        wanted = self.layers_to_transform
        if wanted is None or wanted == []:
            return True
        patterns = self.layers_pattern
        if not patterns:
            # PEFT: the first numbered segment is the layer index
            found = regex.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        else:
            found = None
            for p in [patterns] if isinstance(patterns, str) else patterns:
                try:
                    found = regex.match(
                        rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module, timeout=PATTERN_TIMEOUT_S
                    )
                except (TimeoutError, regex.error) as exc:
                    raise InvalidAdapterError(
                        f"{CONFIG_NAME}: layers_pattern {show(p)} cannot be matched against "
                        f"module names; use a plain name such as 'layers'"
                    ) from exc
                if found:
                    break
        if found is None:
            return False
        idx = int(found["idx"])
        return idx == wanted if isinstance(wanted, int) else idx in wanted

    def targets(self, module: str) -> bool:
        """Whether PEFT would put a LoRA layer on ``module`` under this config.

        Example: ``cfg.targets("model.layers.0.self_attn.q_proj")``.
        """
        if self._excluded(module):
            return False
        t = self.target_modules
        if isinstance(t, str):
            return _match(t, module, "target_modules", suffix=False)
        if module in t:
            return True
        return any(module.endswith(f".{k}") for k in t) and self._layer_ok(module)

    def declares(self, target: str, module: str) -> bool:
        """Whether ``module`` is one that the list entry ``target`` names (for the check that
        every declared target has weights)."""
        return (module == target or module.endswith(f".{target}")) and self.targets(module)

    def _pattern_value(self, patterns: dict[str, Any], module: str, field: str) -> Any:
        for key, value in patterns.items():
            if _match(key, module, field, suffix=True):
                return value
        return None

    def rank_for(self, module: str) -> int:
        """The rank PEFT gives ``module``: the first matching ``rank_pattern`` key, else ``r``.

        Example: ``cfg.rank_for("model.layers.0.self_attn.q_proj")`` -> 8
        """
        found = self._pattern_value(self.rank_pattern, module, "rank_pattern")
        return self.r if found is None else int(found)

    def alpha_for(self, module: str) -> float:
        """The alpha PEFT gives ``module``: the first matching ``alpha_pattern`` key, else
        ``lora_alpha``."""
        found = self._pattern_value(self.alpha_pattern, module, "alpha_pattern")
        return self.lora_alpha if found is None else float(found)

    def scaling_for(self, module: str, rank: int | None = None) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), as PEFT scales B @ A."""
        r = rank if rank is not None else self.rank_for(module)
        alpha = self.alpha_for(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {show(k)} appears twice")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Decode untrusted JSON bytes into a dict; every failure is an InvalidAdapterError."""
    try:
        obj = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except UnicodeDecodeError as exc:
        raise InvalidAdapterError(f"{what} is not UTF-8 text") from exc
    except RecursionError as exc:
        raise InvalidAdapterError(f"{what} is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and the hooks' errors
        raise InvalidAdapterError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidAdapterError(f"{what} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _format(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors(include_url=False):
        field = ".".join(str(x) for x in e["loc"])
        if e["type"] == "missing":
            hint = {
                "peft_type": ' (e.g. "LORA")',
                "r": " (the LoRA rank, e.g. 8)",
                "target_modules": " (PEFT's save_pretrained writes the resolved list)",
            }.get(field, "")
            parts.append(f"{field} is missing{hint}")
        elif e["type"] == "loraroute":
            parts.append(e["msg"])
        else:
            parts.append(f"{field or 'config'} is {show(e.get('input'))}: {e['msg']}")
    return f"{CONFIG_NAME} is refused: " + "; ".join(parts)


_TOO_LARGE = (
    f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes; a LoRA config is a few hundred bytes"
)


def read_config_bytes(path: Path) -> bytes:
    """The bytes of a config file, refusing one over :data:`MAX_CONFIG_BYTES`."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InvalidAdapterError(f"{CONFIG_NAME} cannot be read ({exc.strerror})") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidAdapterError(_TOO_LARGE)
    return data


def read_adapter_config(source: Path | str | bytes | Mapping[str, Any]) -> AdapterConfig:
    """Read and check a PEFT LoRA config from a file, its bytes, or a decoded dict.

    Raises :class:`InvalidAdapterError` naming the field, the value and what is allowed.

    Example: ``read_adapter_config(Path("out/legal/adapter_config.json")).r``
    """
    if isinstance(source, str | Path):
        source = read_config_bytes(Path(source))
    if isinstance(source, bytes):
        if len(source) > MAX_CONFIG_BYTES:
            raise InvalidAdapterError(_TOO_LARGE)
        source = parse_json_object(source, CONFIG_NAME)
    try:
        return AdapterConfig.model_validate(source)
    except ValidationError as exc:
        raise InvalidAdapterError(_format(exc)) from None


__all__ = [
    "CONFIG_NAME",
    "AdapterConfig",
    "parse_json_object",
    "read_adapter_config",
    "read_config_bytes",
    "show",
]
