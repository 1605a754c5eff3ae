"""Typed configuration: one pydantic tree, YAML presets, dotted overrides.

Importing this package must not import torch, Ray or vLLM (a unit test enforces it).
"""

from configs.loader import (
    ConfigError,
    available_presets,
    config_from_yaml_text,
    dump_config,
    load_config,
    parse_override,
)
from configs.schema import (
    QWEN_UNIT,
    REWARD_TERMS,
    TINY_POLICIES,
    Config,
    DatasetSpec,
)

__all__ = [
    "Config",
    "ConfigError",
    "DatasetSpec",
    "QWEN_UNIT",
    "REWARD_TERMS",
    "TINY_POLICIES",
    "available_presets",
    "config_from_yaml_text",
    "dump_config",
    "load_config",
    "parse_override",
]
