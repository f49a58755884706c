"""The one command-line convention of every command: absl flags, spelled with underscores.

Every command (`limubert-train`, `limubert-prepare-data`, `limubert-embed`,
`limubert-predict`, `limubert-convert`, `limubert-demo`, or `python -m limubert_jax.<module>`) is a
`main(argv=None) -> int` built on `run_command`:

* flags are absl flags, `--name=value` or `--name value`, booleans `--name`/`--noname`, all
  spelled with underscores; an old dashed spelling (`--batch-size`) is refused with the new
  one named. Positional arguments follow the flags (a subcommand word is the first one).
* `--help` (`-h`, `--helpshort`) prints the command's usage and its own flags;
  `--helpfull` adds absl's global flags (logging: `--verbosity`, `--logtostderr`, ...).
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
import re
import sys
from typing import Any, Callable, Sequence

from absl import flags, logging

from limubert_jax.runtime import compilation_cache
from limubert_jax.runtime.errors import LimuBertError, one_line, run_cli

# (fv, argv) -> None: defines a command's flags on fv; argv is the whole command line (the
# config flag finds its `--config.<field>` overrides in it).
Define = Callable[[flags.FlagValues, list[str]], None]
# (fv, args) -> None: the command's work, given its parsed flags and positional arguments.
Body = Callable[[flags.FlagValues, list[str]], None]

_HELP = ("-h", "-help", "--help", "-?", "--helpshort")
_HELPFULL = ("-helpfull", "--helpfull")


class UsageError(LimuBertError):
    """A command line that does not say what to do (reported like any `LimuBertError`)."""


def run_command(doc: str, define: Define, body: Body, argv: Sequence[str] | None = None, *,
                positional: Sequence[str | tuple[str, ...]] = ()) -> int:
    """Parses a command line and runs `body`; returns the exit status.

    doc: the command's module docstring (usage first), printed by `--help`.
    positional: the positional arguments, in order: a name for the help (`IN`), or a tuple
    of the words allowed there (a subcommand).
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
    fv = flags.FlagValues()
    define(fv, full_argv)
    _maybe_help(doc, fv, full_argv, positional)
    try:
        args = parse(fv, full_argv)
        _check_positional(args, positional)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if process and flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = 0  # INFO, app.run's level for a command
    compilation_cache.enable()
    return run_cli(lambda _: body(fv, args), None if process else full_argv)


def parse(fv: flags.FlagValues, argv: list[str]) -> list[str]:
    """Parses `argv` (program name first) into the command's `fv` and absl's global flags;
    returns the positional arguments. Every bad flag is a one-line `UsageError`."""
    try:
        # absl's own flags first, so that the command's pass sees every flag left: an unknown
        # one is reported before a missing required one.
        rest = flags.FLAGS(argv, known_only=True)
        return fv(rest)[1:]
    except flags.UnrecognizedFlagError as e:
        message = _unknown_flag(e.flagname, fv)
    except flags.IllegalFlagValueError as e:
        message = _illegal_value(str(e))
    except (flags.Error, ValueError) as e:  # a flag without its value, a boolean given one
        message = str(e)
    except (AttributeError, KeyError) as e:  # an override of a field the config does not have
        if "config" not in fv:
            raise
        field = str(e).strip("'\"")
        flag = next((a for a in argv if a.startswith("--config.") and f".{field}" in a.split("=")[0]), "--config")
        message = f"{flag}: no config field {field!r} (every field: configs/default.py)"
    except Exception as e:  # noqa: BLE001  (a config file runs code, and fails in many ways)
        if "config" not in fv:
            raise
        message = f"--config: {one_line(e)}"
    raise UsageError(message)


def flag_value(flag: Any) -> Any:
    """The value of a flag; a config file that failed to load (ml_collections defers a
    missing file's error to first use) is a `LimuBertError`."""
    try:
        value = flag.value
        hasattr(value, "to_dict")  # a config that failed to load raises on first attribute access
    except Exception as e:  # noqa: BLE001  (config files fail to load in many ways)
        raise LimuBertError(f"--{flag.name}: {one_line(e)}") from None
    return value


def _maybe_help(doc: str, fv: flags.FlagValues, argv: list[str], positional) -> None:
    words = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    full = any(w in _HELPFULL for w in words)
    if not full and not any(w in _HELP for w in words):
        return
    own = [line for m in fv.flags_by_module_dict() for line in fv.module_help(m).splitlines() if line.startswith(" ")]
    lines = [doc.strip(), ""]
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


def _check_positional(args: list[str], positional) -> None:
    if len(args) != len(positional):
        if not positional:
            raise UsageError(f"unexpected arguments: {' '.join(args)} (see --help)")
        raise UsageError(f"expected {_usage(positional)}; got: {' '.join(args)} (see --help)")
    for arg, words in zip(args, positional):
        if isinstance(words, tuple) and arg not in words:
            spelled = arg.replace("-", "_")
            hint = f"; spelled with underscores now: {spelled}" if spelled in words else ""
            raise UsageError(f"unknown command {arg!r} (commands: {', '.join(words)}){hint}")


def _unknown_flag(name: str, fv: flags.FlagValues) -> str:
    """The error for an unknown flag, naming the underscore spelling of a dashed one."""
    spelled = name.replace("-", "_")
    if spelled != name:
        if spelled in fv or spelled in flags.FLAGS:
            return f"unknown flag --{name}: flags are spelled with underscores: --{spelled}"
        negated = spelled.removeprefix("no_")  # --no-emb-norm: absl's negation is --noemb_norm
        if any(negated in values and values[negated].boolean for values in (fv, flags.FLAGS)):
            return f"unknown flag --{name}: flags are spelled with underscores: --no{negated}"
    close = difflib.get_close_matches(spelled, list(fv), n=1)
    return f"unknown flag --{name}" + (f"; did you mean --{close[0]}?" if close else " (see --help)")


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
