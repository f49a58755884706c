"""Helpers shared by the config files in `configs/`."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import ml_collections


def sibling_config(config_file: str, name: str) -> ModuleType:
    """Imports `configs/<name>.py` beside `config_file`, from whatever the working directory is."""
    path = Path(config_file).resolve().with_name(f"{name}.py")
    module_name = f"_limubert_configs_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return sys.modules[module_name]


def parse_version(version: str) -> tuple[int, int]:
    """'20_120' -> (20 Hz, 120 steps)."""
    match = re.fullmatch(r"(\d+)_(\d+)", version)
    if not match:
        raise ValueError(f"dataset version must look like <rate Hz>_<window steps>, e.g. 20_120; got {version!r}")
    return int(match.group(1)), int(match.group(2))


def with_dataset(config: ml_collections.ConfigDict, name: str, version: str) -> ml_collections.ConfigDict:
    """Points `config` at a dataset version; the model's window length follows the version."""
    _, seq_len = parse_version(version)
    config.dataset.name = name
    config.dataset.version = version
    config.model.seq_len = seq_len
    return config
