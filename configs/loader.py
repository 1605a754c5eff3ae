"""Load a Config from a preset or YAML file plus dotted command-line overrides.

Precedence (later wins): schema defaults < preset or --config file < `a.b.c=value` overrides.
Values in overrides are parsed as YAML scalars/collections, so `learner.lr=1e-6`,
`run.resume=true` and `data.train=[{name: x, format: revos, root: /d}]` all work.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from configs.schema import Config

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "debug_cpu"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the offending value."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.field=value")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not parseable: {exc}") from None
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        # `prefix=run:` or `x=- a` would read as block YAML; on a command line they mean the text.
        # Mappings and lists are given in flow style: key={a: 1} or key=[1, 2].
        value = raw.strip()
    return [k.strip() for k in keys], value


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any, original: str) -> None:
    node: Any = tree
    schema: Any = Config
    for i, key in enumerate(keys):
        fields = getattr(schema, "model_fields", None)
        if fields is not None and key not in fields:
            where = ".".join(keys[:i]) or "the top level"
            raise ConfigError(
                f"override '{original}': unknown field '{key}' in {where}; known: {sorted(fields)}"
            )
        default: Any = None
        if fields is not None:
            annotation = fields[key].annotation
            schema = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            if schema is None:
                default = fields[key].get_default(call_default_factory=True)
        if i == len(keys) - 1:
            node[key] = value
        else:
            child = node.get(key)
            if not isinstance(child, dict):
                # A dotted key into a mapping field (reward.weights.mask=2) changes one entry of the
                # field's default mapping, not the whole mapping.
                child = copy.deepcopy(default) if isinstance(default, dict) else {}
                node[key] = child
            node = child


def format_validation_error(exc: ValidationError, tree: dict[str, Any]) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = err.get("input")
        if isinstance(value, dict) and len(repr(value)) > 120:
            shown = "{...}"
        else:
            shown = repr(value)
        msg = err["msg"]
        if loc == "(root)":
            lines.append(f"  - {msg}")
        else:
            lines.append(f"  - {loc} = {shown}: {msg}")
    return "\n".join(lines)


def load_config(
    preset: str | None = DEFAULT_PRESET,
    overrides: Iterable[str] = (),
    config_file: str | Path | None = None,
) -> Config:
    """Build and validate the Config. Raises ConfigError with a readable message."""
    tree: dict[str, Any] = {}
    if config_file is not None:
        tree = _read_yaml(Path(config_file))
    elif preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset '{preset}'; available: {available_presets()}")
        tree = _read_yaml(path)
    tree = _deep_merge({}, tree)
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(tree, keys, value, text)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, tree)) from None


def dump_config(cfg: Config) -> str:
    """YAML text of a resolved config (written next to every run for reproducibility)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_from_yaml_text(text: str) -> Config:
    data = yaml.safe_load(text) or {}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data)) from None
