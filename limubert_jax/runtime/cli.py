"""The one command-line convention of every command: absl flags, spelled with underscores.

Every command (`limubert-train`, `limubert-prepare-data`, `limubert-embed`,
`limubert-predict`, `limubert-convert`, `limubert-demo`, or `python -m limubert_jax.<module>`) is a
`main(argv=None) -> int` built on `run_command`:

* flags are absl flags, `--name=value` or `--name value`, booleans `--name`/`--noname`,
  documented with underscores. The dashed spelling PyTorch users type is an alias (`respell`):
  `--batch-size=4`, `--no-overwrite`, `--no-emb-norm` (absl's `--noemb_norm`), config
  overrides `--config.train.batch-size=4`, subcommand words `to-torch`; a dashed name that is
  no flag is an unknown flag, with the closest flag suggested. Positional arguments follow the
  flags (a subcommand word is the first one).
* `--help` (`-h`, `--helpshort`) prints the command's usage and its own flags;
  `--helpfull` adds absl's global flags (logging: `--verbosity`, `--logtostderr`, ...);
  `--version` prints `limubert-jax VERSION`.
* programs compiled by one run are kept for the next (`compilation_cache`);
* a usage error is one `error: ...` line on stderr and status 2; a `LimuBertError` while the
  command runs is one line and status 2 too, and so is a full, read-only or forbidden
  destination; a signal ends it through its cleanup (`errors.run_cli`).

Each call defines the command's flags on a `flags.FlagValues` of its own rather than on
absl's global FLAGS: every command module can then be imported in one process (two global
`--config` flags would collide), and a command called twice in one process (tests,
notebooks) starts from its defaults, not from the previous call's flags. absl's own flags
stay global; the command's flags are parsed from what they leave (tests/test_cli.py checks
that no command's flag has the name of a global one).
"""

from __future__ import annotations

import difflib
import faulthandler
import importlib.metadata
import re
import sys
from typing import Any, Callable, Sequence

from absl import flags, logging

from limubert_jax.runtime import compilation_cache
from limubert_jax.runtime.errors import LimuBertError, one_line, run_cli

# (fv, argv) -> None: defines a command's flags on fv; argv is the whole command line (the
# config flag finds its `--config.<field>` overrides in it, once `parse` has respelled it in
# place: keep this very list, not a copy).
Define = Callable[[flags.FlagValues, list[str]], None]
# (fv, args) -> None: the command's work, given its parsed flags and positional arguments.
Body = Callable[[flags.FlagValues, list[str]], None]

_HELP = ("-h", "-help", "--help", "-?", "--helpshort")
_HELPFULL = ("-helpfull", "--helpfull")


class UsageError(LimuBertError):
    """A command line that does not say what to do (reported like any `LimuBertError`)."""


def run_command(doc: str, define: Define, body: Body, argv: Sequence[str] | None = None, *,
                positional: Sequence[str | tuple[str, ...]] = (),
                help_lines: Callable[[], Sequence[str]] | None = None) -> int:
    """Parses a command line and runs `body`; returns the exit status.

    doc: the command's module docstring (usage first), printed by `--help`.
    positional: the positional arguments, in order: a name for the help (`IN`), or a tuple
    of the words allowed there (a subcommand).
    help_lines: lines `--help` prints after the usage (what the command's values may be);
    called only then, so what it imports costs nothing to a run of another command.
    argv: the arguments after the program name; None for the process's own command line
    (a console script or `python -m`), which also sets up absl's log handler as `app.run`
    does. A usage error exits (SystemExit 2) whether or not argv is given, like argparse.
    """
    process = argv is None
    full_argv = [sys.argv[0], *(sys.argv[1:] if process else argv)]
    if process:
        # What absl's app.run sets up: its log handler (stderr), and Python tracebacks of
        # every thread on a crash (a segfault inside XLA then names the Python frame).
        logging.use_absl_handler()
        faulthandler.enable()
    if "--version" in _words(full_argv):
        print(f"limubert-jax {version()}")
        sys.exit(0)
    fv = flags.FlagValues()
    define(fv, full_argv)
    _maybe_help(doc, fv, full_argv, positional, help_lines)
    try:
        args = _positional(parse(fv, full_argv), positional)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if process and flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = 0  # INFO, app.run's level for a command
    compilation_cache.enable()
    return run_cli(lambda _: body(fv, args), None if process else full_argv)


def version() -> str:
    """The installed distribution's version; a checkout run without installing has the package's."""
    try:
        return importlib.metadata.version("limubert-jax")
    except importlib.metadata.PackageNotFoundError:
        import limubert_jax  # noqa: PLC0415

        return getattr(limubert_jax, "__version__", "unknown")


def parse(fv: flags.FlagValues, argv: list[str]) -> list[str]:
    """Parses `argv` (program name first) into the command's `fv` and absl's global flags;
    returns the positional arguments. Every bad flag is a one-line `UsageError`.

    `argv` is respelled in place first (`respell`): it is the list the command's `define`
    was given, where the config flag reads its overrides when `--config` is parsed."""
    argv[:] = respell(argv, fv)
    try:
        # absl's own flags first, so that the command's pass sees every flag left: an unknown
        # one is reported before a missing required one.
        rest = flags.FLAGS(argv, known_only=True)
        return fv(rest)[1:]
    except UsageError:  # the config's own check of its overrides (config_lib), already one line
        raise
    except flags.UnrecognizedFlagError as e:
        message = _unknown_flag(e.flagname, fv)
    except flags.IllegalFlagValueError as e:
        message = _illegal_value(str(e))
    except (flags.Error, ValueError) as e:  # a flag without its value, a boolean given one
        message = str(e)
    except Exception as e:  # noqa: BLE001  (a config file runs code, and fails in many ways)
        if "config" not in fv:
            raise
        message = f"--config: {one_line(e)}"
    raise UsageError(message)


# `-name`, `--name`, `--name=value`: absl's forms of a flag.
_FLAG = re.compile(r"(--?)([^=]+)(.*)", re.DOTALL)


def respell(argv: Sequence[str], fv: flags.FlagValues) -> list[str]:
    """`argv` with each dashed flag name that means a flag of `fv` or of absl written the way
    absl spells it: `--batch-size=4` -> `--batch_size=4`, `--no-emb-norm` -> `--noemb_norm`,
    `--config.train.batch-size` -> `--config.train.batch_size`. Other arguments are kept, so
    that an unknown dashed flag is reported as typed (`_unknown_flag`); so is everything after
    `--`, where absl's flags end too."""
    end = argv.index("--") if "--" in argv else len(argv)
    out = list(argv)
    for i in range(1, end):
        match = _FLAG.fullmatch(argv[i])
        if match and "-" in match[2] and (name := _absl_name(match[2], fv)):
            out[i] = match[1] + name + match[3]
    return out


def _absl_name(dashed: str, fv: flags.FlagValues) -> str | None:
    """absl's name for a dashed flag name, None if it means no flag."""
    head, dot, path = dashed.partition(".")
    # A dotted name is an override `--config.<field path>` of the config flag `head`: a path
    # of Python names, never dashed (config_lib checks it against the config, suggesting a field).
    path = path.replace("-", "_")

    def means(name: str, negation: bool) -> bool:
        if dot:  # ml_collections defines the override, boolean or not, when --config is parsed
            return name in fv
        return any(name in values and (values[name].boolean or not negation) for values in (fv, flags.FLAGS))

    spelled = head.replace("-", "_")
    if means(spelled, False):
        return f"{spelled}{dot}{path}"
    negated = spelled.removeprefix("no").removeprefix("_")  # --no-emb-norm: absl's --noemb_norm
    if spelled.startswith("no") and means(negated, True):
        return f"no{negated}{dot}{path}"
    return None


def closest(name: str, choices: Sequence[str]) -> str | None:
    """The one of `choices` that `name` most likely misspells, if any: what a suggestion names."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return close[0] if close else None


def flag_value(flag: Any) -> Any:
    """The value of a flag; a config file that failed to load (ml_collections defers a
    missing file's error to first use) is a `LimuBertError`."""
    try:
        value = flag.value
        hasattr(value, "to_dict")  # a config that failed to load raises on first attribute access
    except Exception as e:  # noqa: BLE001  (config files fail to load in many ways)
        raise LimuBertError(f"--{flag.name}: {one_line(e)}") from None
    return value


def _words(argv: list[str]) -> list[str]:
    """The arguments absl reads flags from (those before `--`)."""
    return argv[1:argv.index("--")] if "--" in argv else argv[1:]


def _maybe_help(doc: str, fv: flags.FlagValues, argv: list[str], positional, help_lines) -> None:
    words = _words(argv)
    full = any(w in _HELPFULL for w in words)
    if not full and not any(w in _HELP for w in words):
        return
    own = [line for m in fv.flags_by_module_dict() for line in fv.module_help(m).splitlines() if line.startswith(" ")]
    lines = [doc.strip(), ""]
    if help_lines:
        lines += [*help_lines(), ""]
    if positional:
        lines += [f"positional arguments: {_usage(positional)}", ""]
    lines += ["flags:", *own, ""]
    if full:
        lines += ["absl flags:", flags.FLAGS.get_help(prefix="  ")]
    else:
        lines.append("--helpfull also lists absl's flags (logging: --verbosity, --logtostderr, ...).")
    print("\n".join(lines))
    sys.exit(0)


def _usage(positional) -> str:
    return " ".join("{" + ",".join(p) + "}" if isinstance(p, tuple) else p for p in positional)


def _positional(args: list[str], positional) -> list[str]:
    """The positional arguments checked against `positional`, a dashed subcommand word
    (`to-torch`) respelled as the word it means."""
    if len(args) != len(positional):
        if not positional:
            raise UsageError(f"unexpected arguments: {' '.join(args)} (see --help)")
        raise UsageError(f"expected {_usage(positional)}; got: {' '.join(args)} (see --help)")
    out = list(args)
    for i, (arg, words) in enumerate(zip(args, positional)):
        if isinstance(words, tuple) and arg not in words:
            spelled = arg.replace("-", "_")
            if spelled not in words:
                close = closest(spelled, words)
                hint = f"; did you mean {close}?" if close else ""
                raise UsageError(f"unknown command {arg!r} (commands: {', '.join(words)}){hint}")
            out[i] = spelled
    return out


def _unknown_flag(name: str, fv: flags.FlagValues) -> str:
    """The error for an unknown flag (as typed: `respell` left it), with the closest of the
    command's flags."""
    close = closest(name.replace("-", "_"), list(fv))
    return f"unknown flag --{name}" + (f"; did you mean --{close}?" if close else " (see --help)")


def _illegal_value(message: str) -> str:
    """absl's 'flag --NAME=VALUE: reason' as 'argument --NAME: reason'; a config's own errors
    as '--config: reason' (the last line of the traceback where a config file raised)."""
    match = re.match(r"flag --([\w.]+)=", message)
    if not match:
        return _last_line(message)
    name, reason = match[1], message[match.end():].split(": ", 1)[-1]
    if reason.endswith("must have a value other than None."):  # absl's required-flag check
        return f"argument --{name} is required (see --help)"
    if name == "config" or name.startswith("config."):
        return f"--{name}: {_last_line(reason)}"
    return f"argument --{name}: {reason}"


def _last_line(text: str) -> str:
    return one_line(Exception(text))
