"""Helpers shared by the config files in `configs/`, and how `--config` finds them.

The config files live in the top-level `configs/` folder of a checkout and install as the
package `limubert_jax.configs` (pyproject maps it, as it maps `datasets/`), so an
installed wheel has them too and `--config=motion` works from any directory.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import ml_collections
from absl import flags
from ml_collections import config_flags

from limubert_jax.runtime import cli
from limubert_jax.runtime.errors import LimuBertError


def sibling_config(config_file: str, name: str) -> ModuleType:
    """Imports `configs/<name>.py` beside `config_file`, from whatever the working directory is."""
    path = Path(config_file).resolve().with_name(f"{name}.py")
    module_name = f"_limubert_configs_{name}"
    module = sys.modules.get(module_name)
    # Cached by name but checked by file: one process may load a checkout's configs and an
    # installed copy's (the wheel test does), and each must get its own siblings.
    if module is None or Path(module.__file__) != path:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return module


def configs_dir() -> Path:
    """The folder of the packaged config files: a checkout's `configs/` (installed
    editable) or the `limubert_jax/configs` of an installed wheel."""
    from limubert_jax import configs  # noqa: PLC0415  (only `--config` needs the folder)

    return Path(configs.__file__).parent


def config_names() -> list[str]:
    """The names `--config` takes for the packaged config files (`motion`, `quickstart`, ...)."""
    return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def resolve_config(value: str) -> str:
    """A `--config` value -> the config file (and its argument) that ml_collections loads.

    A bare name, optionally with the file's argument (`motion`, `motion:10_100`,
    `quickstart`), is a packaged config file; anything else (`configs/motion.py:10_100`,
    `/abs/mine.py`) is a path, kept as it is. An unknown name is a `LimuBertError`.
    """
    name, colon, arg = value.partition(":")
    # A path has a '/', a '.py' or another non-name character; a file of that bare name in the
    # working directory is taken as the path it is.
    if not re.fullmatch(r"\w+", name) or Path(name).is_file():
        return value
    path = configs_dir() / f"{name}.py"
    if name.startswith("_") or not path.is_file():
        raise LimuBertError(f"no packaged config {name!r} (configs: {', '.join(config_names())}); "
                            "or give the path of a config file")
    return f"{path}{colon}{arg}"


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
    'classify', '10_100,report', ...); the model's window length follows the version unless
    `config.model.seq_len` is set (`trainer.model_config_from`)."""
    # The builders' own parser (imported here, when a config is built: it registers them with TFDS).
    from limubert_jax.datasets.common import parse_version  # noqa: PLC0415

    version, task = parse_config_arg(arg)
    version = version or config.dataset.version
    parse_version(version)  # an impossible version fails here, when the config loads
    config.dataset.name = name
    config.dataset.version = version
    if task is not None:
        config.task = task
    return config


def define_config(fv: flags.FlagValues, argv: list[str]) -> None:
    """`--config` (and its `--config.<section>.<field>=VALUE` overrides) on `fv`: a packaged
    config's name (`motion:10_100`) or a config file's path (`configs/motion.py:10_100`)."""
    config_flags.DEFINE_config_file(
        "config", None, "A config: a packaged one by name, with its argument after a colon (motion, "
        "motion:10_100, quickstart), or the path of a config file (configs/motion.py:10_100). Override "
        "any field with --config.<section>.<field>=VALUE.", flag_values=fv, sys_argv=argv)
    flags.mark_flag_as_required("config", flag_values=fv)
    # ml_collections reads the value as a path; a name first becomes the packaged file's path,
    # so one flag serves a checkout and an installed wheel. The parser is this call's own.
    # The overrides are checked as soon as the config is loaded, before ml_collections applies
    # them: its own error for an unknown field is a multi-line KeyError naming no flag.
    parser = fv["config"].parser
    load = parser.parse
    parser.parse = lambda value: check_overrides(load(resolve_config(value)), argv)


def check_overrides(config, argv: list[str]) -> ml_collections.ConfigDict:
    """`config`, once every `--config.<path>` override in `argv` names one of its fields; an
    unknown field is a one-line `cli.UsageError` naming the closest field. argv is spelled as
    absl reads it (`cli.respell`: `--config.train.batch-size` is `--config.train.batch_size`)."""
    for arg in argv[1:]:  # every argument, as ml_collections looks for overrides
        match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if not match:
            continue
        node, fields = config, match[1].split(".")
        for i, field in enumerate(fields):
            key = field.split("[", 1)[0]  # `layers[0]`: ml_collections indexes into the value
            # Where the path goes into a value that is no section (a dataclass, a None to be
            # filled, a file that failed to load), ml_collections checks the rest.
            if not isinstance(node, ml_collections.ConfigDict):
                break
            if key not in node:
                close = cli.closest(key, list(node.keys()))
                hint = (f"; did you mean --config.{'.'.join([*fields[:i], close, *fields[i + 1:]])}?" if close
                        else " (every field: configs/default.py)")
                raise cli.UsageError(f"--config.{match[1]}: no config field {key!r}{hint}")
            node = node[key] if key == field else None
    return config
