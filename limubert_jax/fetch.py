"""Released weights by name, downloaded, verified and converted once (`limubert-fetch`).

    limubert-fetch NAME [--cache_dir=DIR]
    limubert-fetch list

NAME is `limu_bert_x` (LIMU-BERT-X, 20-step windows), `limu_bert:hhar|motion|shoaib|uci` (the
original release's encoders, 120-step windows) or `gru:hhar|motion|shoaib|uci` (their GRU
activity classifiers, saved as whole classifiers on raw windows). The file is downloaded from
its repository at a pinned commit into the cache folder (`--cache_dir`, else
$LIMUBERT_CACHE_DIR, else ~/.cache/limubert_jax/weights), refused unless its SHA-256 is the
released one, and converted once into a checkpoint folder with its model card (README.md); the
command prints that folder. The same happens on first use of a name anywhere a model is taken:
`--config.downstream.encoder=limu_bert_x`, `--config.train.init_from=limu_bert_x`,
`limubert-predict --model=gru:hhar`, `limubert_jax.load_encoder("limu_bert_x")`. Offline, the
error names the URL to fetch and where to put the file. Converting needs the `[torch]` extra.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from limubert_jax.export import released
from limubert_jax.runtime import cli


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("cache_dir", None, f"Where the weights are kept; default ${released.CACHE_ENV}, else "
                        f"{released.DEFAULT_CACHE}.", flag_values=fv)


def _names() -> list[str]:
    return [f"names: {', '.join(released.RELEASED)}"]


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    (name,) = args
    if name == "list":  # the command's output for the user: stdout
        for entry in released.RELEASED.values():
            print(f"{entry.name}\t{entry.url}\t{entry.licence}")
        return
    if name not in released.RELEASED:
        close = cli.closest(name, list(released.RELEASED))
        raise cli.UsageError(f"no released weights named {name!r}" + (f"; did you mean {close}?" if close else "")
                             + f" (names: {', '.join(released.RELEASED)})")
    print(released.fetch(name, cache=fv.cache_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-fetch`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv, positional=("NAME",), help_lines=_names)


if __name__ == "__main__":
    sys.exit(main())
