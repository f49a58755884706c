"""The README.md every saved model carries beside its `model_config.json`: what the model is,
what it was trained on, what it reached, where it comes from and under which licence, the
command that made it, and how to load it."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from limubert_jax.io.state_dict import CLASSIFIER_PIPELINE, GRU_CLASSIFIER, LIMU_BERT
from limubert_jax.runtime.cli import version

CARD_FILE = "README.md"

_LOADERS = {
    LIMU_BERT: ("an encoder", "import limubert_jax\nencoder = limubert_jax.load_encoder({path!r})\n"
                  "embeddings = encoder.embed(windows)  # raw windows (N, S, F) -> (N, S, hidden)"),
    CLASSIFIER_PIPELINE: ("a classifier from raw readings",
                            "import limubert_jax\nclassifier = limubert_jax.load_classifier({path!r})\n"
                            "p = classifier.predict(windows)  # raw windows (N, S, F): p.labels, p.probabilities"),
    GRU_CLASSIFIER: ("a GRU classifier over embeddings",
                       "from limubert_jax.io import checkpoint\n"
                       "kind, config, params = checkpoint.load_model({path!r})"),
}


def model_card(kind: str, config: Any, *, title: str, about: str, path: str | os.PathLike = ".",
               data: str | None = None, metrics: dict[str, Any] | None = None, source: str | None = None,
               licence: str | None = None, citation: str | None = None, command: str | None = None) -> str:
    """The card's Markdown text. `kind` and `config`: the checkpoint's (`model_config.json`);
    `about`: a sentence on what it is; `data`: what it was trained on (dataset and version);
    `metrics`: name -> value it reached (None: not known); `source`, `licence`, `citation`:
    where the weights come from; `command`: what made it (default: this process's command
    line); `path`: the folder as the loading snippet names it."""
    what, loader = _LOADERS.get(kind, ("a model", _LOADERS[GRU_CLASSIFIER][1]))
    fields = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if kind == CLASSIFIER_PIPELINE and fields.get("encoder"):
        fields = {**fields, "encoder": ", ".join(f"{k} {v}" for k, v in fields["encoder"].items())}
    shown = "; ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                      for k, v in fields.items())
    if command is None:  # `python -m limubert_jax.main ...`, or a console script's name
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        program = (["python", "-m", spec.name.removesuffix(".__main__")] if spec is not None and spec.name
                   else [os.path.basename(sys.argv[0]) or "python"])
        command = shlex.join([*program, *sys.argv[1:]])
    lines = [f"# {title}", "", about, "",
             f"- Kind: {kind} ({what}); limubert-jax {version()}.",
             f"- Model: {shown}.",
             f"- Data: {data or 'not recorded'}."]
    if metrics:
        lines.append("- Reached: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in metrics.items() if v is not None) + ".")
    lines += [f"- Source: {source or 'trained with limubert-jax'}.",
              f"- Licence: {licence or 'that of the data and code that made it'}."]
    if citation:
        lines.append(f"- Cite: {citation}.")
    lines += ["", "Made by:", "", "```bash", command, "```", "", "Load it:", "", "```python",
              loader.format(path=str(path)), "```", ""]
    return "\n".join(lines)
