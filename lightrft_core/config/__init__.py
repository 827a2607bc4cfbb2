"""Typed configuration: schema dataclasses, loading with clear errors, and output."""

from .errors import ConfigError, ConfigIssue
from .loader import config_to_dict, dump_config, load_config, load_config_with_warnings
from .schema import COMPONENT_SECTIONS, LightRFTConfig

__all__ = [
    "COMPONENT_SECTIONS",
    "ConfigError",
    "ConfigIssue",
    "LightRFTConfig",
    "config_to_dict",
    "dump_config",
    "load_config",
    "load_config_with_warnings",
]
