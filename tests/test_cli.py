"""One command-line convention for every command, console scripts for all of them, and the
configs inside the wheel (an installed copy runs `--config=quickstart` from any directory)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from absl import flags

from limubert_jax import config_lib, convert, demo, embed, fetch, main, predict, prepare_data
from limubert_jax.runtime import cli, errors
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
COMMANDS = {"limubert-train": main, "limubert-prepare-data": prepare_data, "limubert-embed": embed,
            "limubert-convert": convert, "limubert-demo": demo, "limubert-predict": predict, "limubert-fetch": fetch}


def test_every_command_has_a_console_script_that_runs_without_arguments():
    assert set(SCRIPTS) == set(COMMANDS)
    for script, target in SCRIPTS.items():
        module_name, _, attr = target.partition(":")
        function = getattr(importlib.import_module(module_name), attr)
        assert callable(function), script
        inspect.signature(function).bind()  # the console script's wrapper calls it without arguments
        assert importlib.import_module(module_name) is COMMANDS[script], script


def _flags_of(module, argv=None) -> flags.FlagValues:
    """The command's flags, defined for argv: the list that `cli.parse` is then given (it
    respells it in place, for the config flag that reads its overrides from it)."""
    fv = flags.FlagValues()
    module.define_flags(fv, ["prog"] if argv is None else argv)
    return fv


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_help_lists_the_commands_own_flags(script, capsys):
    module = COMMANDS[script]
    own = {name for name in _flags_of(module) if not name.startswith("config.")}
    assert own and all(name == name.lower() and "-" not in name for name in own)
    assert not own & set(flags.FLAGS), "a command flag named like one of absl's global flags"
    for word in ("--help", "--helpfull"):
        with pytest.raises(SystemExit) as exit_info:
            module.main([word])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(module.__doc__.strip().splitlines()[0])
        for name in own:
            flag = _flags_of(module)[name]
            assert f"--{name}:" in out or f"--[no]{name}:" in out, (word, name)
            assert flag.help.split()[0] in out
        assert ("absl.logging:" in out) == (word == "--helpfull")


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint=c", "--input=x", "--output=e", "--batch-sise=3"],
     "error: unknown flag --batch-sise; did you mean --batch_size?"),
    (["--checkpoint=c", "--input=x", "--output=e", "--no-batch-size"],  # a negation of no boolean
     "error: unknown flag --no-batch-size; did you mean --batch_size?"),
    (["--input=x", "--output=e"], "error: argument --checkpoint is required (see --help)"),
    (["--checkpoint=c", "--input=x", "--output=e", "extra"], "error: unexpected arguments: extra (see --help)"),
])
def test_embed_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        embed.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize("argv, message", [
    (["to-torc", "a", "b"], "error: unknown command 'to-torc' (commands: from_torch, to_torch, to_onnx, "
                            "to_tflite); did you mean to_torch?"),
    (["from_torch", "a", "b", "--n-layer=2"], "error: unknown flag --n-layer; did you mean --n_layers?"),
    (["from_torch", "a"], "error: expected {from_torch,to_torch,to_onnx,to_tflite} IN OUT; got: from_torch a "
                          "(see --help)"),
])
def test_convert_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize("argv, message", [
    (["to_torch", "ckpt", "out.pt", "--n_layers=2"], "error: --n_layers: for from_torch only, not to_torch"),
    (["to_onnx", "ckpt", "out.onnx", "--format=pt"], "error: --format: for to_torch only, not to_onnx"),
    (["to_torch", "ckpt", "out.pt", "--batch=4"], "error: --batch: for to_tflite only, not to_torch"),
])
def test_flags_of_one_command_are_refused_for_the_others(tmp_path, capsys, argv, message):
    assert convert.main([argv[0], str(tmp_path / argv[1]), str(tmp_path / argv[2]), *argv[3:]]) == 2
    assert capsys.readouterr().err.strip() == message


def test_dashed_spellings_are_aliases_of_every_flag(capsys):
    """PyTorch and Hugging Face habits: --batch-size (=VALUE or VALUE), the --no- negations,
    absl's own flags (--log-dir) and the end of the flags (--) as absl has it."""
    argv = ["prog", "--checkpoint=c", "--input=x", "--output=e", "--batch-size", "7", "--input-normalized",
            "--overwrite", "--no-overwrite", "--log-dir=/tmp/a-b", "--", "--not-a-flag"]
    fv = _flags_of(embed, argv)
    assert cli.parse(fv, argv) == ["--not-a-flag"]
    assert (fv.batch_size, fv.input_normalized, fv.overwrite, flags.FLAGS.log_dir) == (7, True, False, "/tmp/a-b")
    flags.FLAGS["log_dir"].unparse()  # absl's flags are global: the next test starts from the default
    with pytest.raises(SystemExit):  # the value is checked, and named by the documented spelling
        embed.main(["--checkpoint=c", "--input=x", "--output=e", "--batch-size=0"])
    assert capsys.readouterr().err.strip() == "error: argument --batch_size: 0 is not a positive integer"


def test_dashed_subcommands_and_flags_reach_the_command(monkeypatch):
    seen = []
    monkeypatch.setattr(convert, "_run", lambda fv, args: seen.append((args, fv.n_layers, fv.emb_norm, fv.overwrite)))
    assert convert.main(["from-torch", "in.pt", "out", "--n-layers=2", "--no-emb-norm", "--no-overwrite"]) == 0
    assert convert.main(["to-torch", "ckpt", "out.pt", "--noemb-norm"]) == 0
    assert seen == [(["from_torch", "in.pt", "out"], 2, False, False),
                    (["to_torch", "ckpt", "out.pt"], 4, False, False)]


@pytest.mark.parametrize("override, message", [
    ("--config.train.batchsize=4",
     "error: --config.train.batchsize: no config field 'batchsize'; did you mean --config.train.batch_size?"),
    ("--config.trian.batch-size=4",
     "error: --config.trian.batch_size: no config field 'trian'; did you mean --config.train.batch_size?"),
    ("--config.train.zzzz=4", "error: --config.train.zzzz: no config field 'zzzz' (every field: configs/default.py)"),
])
def test_a_config_override_of_no_field_names_the_field_it_meant(monkeypatch, capsys, override, message):
    monkeypatch.setattr(main, "_run", lambda fv, args: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--config=quickstart", "--workdir=w", override])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_a_dashed_config_override_is_the_underscored_field(monkeypatch):
    seen = []
    monkeypatch.setattr(main, "_run", lambda fv, args: seen.append(cli.flag_value(fv["config"])))
    argv = ["--config=quickstart", "--workdir=w", "--config.train.batch-size=4", "--config.train.num-epochs", "5"]
    assert main.main(argv) == 0
    assert (seen[0].train.batch_size, seen[0].train.num_epochs) == (4, 5)


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_version_of_every_command(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        COMMANDS[script].main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"limubert-jax {importlib.metadata.version('limubert-jax')}\n"


def test_train_help_lists_the_configs_and_the_tasks(capsys):
    from limubert_jax import tasks  # noqa: PLC0415

    with pytest.raises(SystemExit):
        main.main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.endswith(": " + ", ".join(config_lib.config_names())) for line in lines)
    assert any(line.endswith(": " + ", ".join(tasks.TASKS)) for line in lines)


def test_flags_do_not_leak_between_calls_in_one_process():
    for _ in range(2):  # a second definition of the same flags in one process is no collision
        fv = _flags_of(embed, ["prog", "--checkpoint=c", "--input=x", "--output=e"])
        assert cli.parse(fv, ["prog", "--checkpoint=c", "--input=x", "--output=e", "--batch_size=7"]) == []
        assert fv.batch_size == 7
    fv = _flags_of(embed)
    cli.parse(fv, ["prog", "--checkpoint=c", "--input=x", "--output=e"])
    assert fv.batch_size == 1024  # the default again, not the previous call's 7


def test_config_by_name_by_path_and_with_overrides():
    assert config_lib.resolve_config("motion:10_100") == f"{ROOT / 'configs' / 'motion.py'}:10_100"
    assert config_lib.resolve_config("configs/motion.py:10_100") == "configs/motion.py:10_100"
    with pytest.raises(LimuBertError, match=r"no packaged config 'nope' \(configs: default, .*quickstart"):
        config_lib.resolve_config("nope")
    for value in ("motion:10_100,classify", f"{ROOT / 'configs' / 'motion.py'}:10_100,classify"):
        argv = ["prog", f"--config={value}", "--workdir=w", "--config.train.batch_size=64"]
        fv = _flags_of(main, argv)
        assert cli.parse(fv, argv) == []
        config = cli.flag_value(fv["config"])
        assert (config.dataset.name, config.dataset.version, config.task, config.train.batch_size) == (
            "motionsense", "10_100", "classify", 64)


def _copy_source(target: Path) -> None:
    """What a wheel is built from (a copy, so that the build leaves nothing in the checkout)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "dummy_data")
    for name in ("limubert_jax", "datasets", "configs"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)


@pytest.mark.slow
def test_the_wheel_ships_every_package_the_configs_and_the_scripts(tmp_path):
    source, dist, site = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    _copy_source(source)
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))",
         str(dist)], cwd=source, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = dist / build.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "limubert_jax").rglob("__init__.py")}
    packages |= {f"limubert_jax/{p.parent.relative_to(ROOT)}" for p in (ROOT / "datasets").rglob("__init__.py")}
    packages |= {f"limubert_jax/{p.parent.relative_to(ROOT)}" for p in (ROOT / "configs").glob("__init__.py")}
    assert [p for p in sorted(packages) if f"{p}/__init__.py" not in names] == []
    configs = {f"limubert_jax/configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
    assert {"limubert_jax/configs/quickstart.py", "limubert_jax/configs/default.py"} <= configs <= names
    assert "limubert_jax/datasets/hhar/README.md" in names and "limubert_jax/datasets/hhar/checksums.tsv" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert all(f"{script} = {target}" in (site / entry_points).read_text() for script, target in SCRIPTS.items())

    # The installed copy, from a directory with no configs/ in it, through the command's own
    # flag parsing: the packaged config by name, its default.py sibling beside it.
    script = (
        "import sys, limubert_jax\n"
        "from absl import flags\n"
        "from limubert_jax import config_lib, main\n"
        "from limubert_jax.runtime import cli\n"
        "argv = ['limubert-train', '--config=quickstart:10_100', '--workdir=w', '--config.train.num_epochs=3']\n"
        "fv = flags.FlagValues()\n"
        "main.define_flags(fv, argv)\n"
        "assert cli.parse(fv, argv) == []\n"
        "config = cli.flag_value(fv['config'])\n"
        "print(limubert_jax.__file__, config_lib.configs_dir(), config.dataset.name, config.dataset.version,\n"
        "      config.train.num_epochs, config.model.n_layers)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    module_file, configs_dir, *values = result.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(configs_dir) == site / "limubert_jax" / "configs"
    assert values == ["synthetic_imu", "10_100", "3", "4"]


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, which a command started from a terminal has: a suite
    started from a background shell inherits SIGINT ignored, and Python then installs none."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _signalled_in_a_destructor(signum: int, finished: list):
    """A command whose `signum` arrives inside a destructor, where the handler's exception is
    printed and ignored by Python; left alone, it runs 5 s and appends to `finished`."""

    class SignalsInDestructor:
        def __del__(self):
            os.kill(os.getpid(), signum)
            time.sleep(0.5)  # the handler runs here and its exception ends this __del__

    def command(argv):
        SignalsInDestructor()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)

    return command


def _assert_ended_by(signum: int, capsys) -> None:
    err = capsys.readouterr().err
    assert "Exception ignored" not in err and err.strip().endswith(f"({signum.name})")


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.usefixtures("python_sigint_handler")
def test_a_signal_whose_exception_python_drops_still_ends_the_command(capsys, signum, status):
    """A signal's handler runs wherever the main thread is; raised inside a destructor (or
    JAX's garbage-collection callback) its exception is printed and ignored by Python."""
    finished = []
    assert errors.run_cli(_signalled_in_a_destructor(signum, finished), []) == status
    assert not finished
    _assert_ended_by(signum, capsys)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.usefixtures("python_sigint_handler")
def test_a_redelivered_signal_that_finds_the_hook_still_running_is_not_lost(monkeypatch, capsys, signum, status):
    """On a loaded machine the unraisable hook can still be running when the signal it
    redelivers comes back; raised there, the exception would be dropped a second time and the
    command run on to status 0. Here the main thread is held in the hook past the redelivery."""
    finished, calls = [], []
    redeliver = errors._redeliver

    def held_in_the_hook(*args):
        redeliver(*args)
        calls.append(args)
        if len(calls) == 1:
            time.sleep(0.5)  # the first redelivery (after 10 ms) arrives here, inside the hook

    monkeypatch.setattr(errors, "_redeliver", held_in_the_hook)
    assert errors.run_cli(_signalled_in_a_destructor(signum, finished), []) == status
    assert not finished and len(calls) == 2
    _assert_ended_by(signum, capsys)
