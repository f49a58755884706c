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


def parse_config_arg(arg: str) -> tuple[str | None, str | None]:
    """A config argument such as '10_100', 'classify' or '10_100,classify' -> (version, task)."""
    version = task = None
    for token in filter(None, (t.strip() for t in str(arg).split(","))):
        if re.fullmatch(r"\d+_\d+", token):
            version = token
        elif task is None:
            task = token
        else:
            raise ValueError(f"config argument {arg!r}: two tasks ({task!r}, {token!r}); join tasks with '+'")
    return version, task


def with_dataset(config: ml_collections.ConfigDict, name: str, arg: str) -> ml_collections.ConfigDict:
    """Points `config` at a dataset version and task from a config argument ('20_120',
    'classify', '10_100,report', ...); the model's window length follows the version."""
    version, task = parse_config_arg(arg)
    version = version or config.dataset.version
    _, seq_len = parse_version(version)
    config.dataset.name = name
    config.dataset.version = version
    config.model.seq_len = seq_len
    if task is not None:
        config.task = task
    return config
