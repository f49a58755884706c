"""Markdown result tables laid out like the LIMU-BERT paper's Table 3.

`results[dataset][method]` holds a metrics dict with at least "accuracy" and "macro_f1" as
fractions in [0, 1] (e.g. `evaluation.classification_metrics` output). The table has one
row per method and an "acc" / "F1" column pair per dataset, in percent with one decimal.
The best value of each column is bold (every method that ties at the shown precision);
a missing or non-finite value is shown as "—".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from etils import epath

from limubert_jax.io import storage

MISSING = "—"

METHOD_NAMES = {
    "limu_gru_v2": "LIMU-GRU",
    "limu_gru_v1": "LIMU-GRU (v1)",
    "limu_lstm_v1": "LIMU-LSTM",
    "limu_cnn1_v1": "LIMU-CNN1D",
    "limu_cnn2_v1": "LIMU-CNN2D",
    "limu_attn_v1": "LIMU-Attn",
    "rgru": "R-GRU",
    "dcnn": "DCNN",
    "deepsense": "DeepSense",
}

DATASET_NAMES = {
    "hhar": "HHAR",
    "uci": "UCI",
    "uci_hapt": "UCI",
    "motion": "MotionSense",
    "motionsense": "MotionSense",
    "shoaib": "Shoaib",
    "wisdm": "WISDM",
}

_METRICS = (("accuracy", "acc"), ("macro_f1", "F1"))


def method_display_name(key: str) -> str:
    """Paper-style name of a method key (`limu_gru_v2` -> `LIMU-GRU`; fine-tuned ones say so:
    `finetune_gru_v2` -> `LIMU-GRU fine-tuned`, `finetune_gru_v2_frozen` -> `LIMU-GRU fine-tuned
    (frozen encoder)`); unknown keys as is."""
    if key.startswith("finetune_"):
        head = key.removeprefix("finetune_")
        frozen = head.endswith("_frozen")
        head = head.removesuffix("_frozen")
        name = METHOD_NAMES.get(f"limu_{head}", f"LIMU {head}")
        return f"{name} fine-tuned" + (" (frozen encoder)" if frozen else "")
    return METHOD_NAMES.get(key, key)


def dataset_display_name(key: str) -> str:
    """Paper-style name of a dataset key, with its version if given (`hhar` -> `HHAR`,
    `uci_hapt/20_120` -> `UCI 20_120`); unknown names as they are."""
    name, _, version = key.partition("/")
    shown = DATASET_NAMES.get(name, name)
    return f"{shown} {version}" if version else shown


def _ordered(given: Sequence[str] | None, found: list[str]) -> list[str]:
    return list(given) if given is not None else found


def _value(results, dataset: str, method: str, metric: str) -> float | None:
    entry = results.get(dataset, {}).get(method)
    if not isinstance(entry, Mapping):
        return None
    value = entry.get(metric)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def table3_markdown(results: Mapping[str, Mapping[str, Mapping]], datasets_order: Sequence[str] | None = None,
                    methods_order: Sequence[str] | None = None) -> str:
    """The results as a markdown table (see the module docstring); ends with a newline.

    datasets_order / methods_order pick and order the columns / rows; by default every
    dataset and method in `results`, in first-seen order.
    """
    datasets = _ordered(datasets_order, list(results))
    found_methods: list[str] = []
    for per_method in results.values():
        for method in per_method:
            if method not in found_methods:
                found_methods.append(method)
    methods = _ordered(methods_order, found_methods)

    header = ["method"]
    align = ["---"]
    columns = []  # (dataset, metric)
    for dataset in datasets:
        for metric, short in _METRICS:
            header.append(f"{dataset_display_name(dataset)} {short}")
            align.append("---:")
            columns.append((dataset, metric))

    shown = {
        (method, column): (None if (v := _value(results, column[0], method, column[1])) is None
                           else f"{100.0 * v:.1f}")
        for method in methods for column in columns
    }
    best = {}
    for column in columns:
        values = [float(s) for m in methods if (s := shown[(m, column)]) is not None]
        best[column] = max(values) if values else None

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for method in methods:
        cells = [method_display_name(method)]
        for column in columns:
            text = shown[(method, column)]
            if text is None:
                cells.append(MISSING)
            elif float(text) == best[column]:
                cells.append(f"**{text}**")
            else:
                cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(path, results: Mapping[str, Mapping[str, Mapping]], title: str,
                 notes: str | Sequence[str] | None = None, *, datasets_order: Sequence[str] | None = None,
                 methods_order: Sequence[str] | None = None) -> epath.Path:
    """Writes `# title`, the Table-3 layout and optional notes to a markdown file.

    notes: a paragraph (str) or a list of bullet points. `path` is local or an object-store
    path; the file appears whole (`storage.write_text`). Returns the path.
    """
    parts = [f"# {title}", "", table3_markdown(results, datasets_order, methods_order).rstrip("\n")]
    parts.append("")
    parts.append("Accuracy and macro-F1 in percent on the test split; best per column in bold; "
                 f"{MISSING} = not run.")
    if notes:
        parts += ["", "## Notes", ""]
        if isinstance(notes, str):
            parts.append(notes.strip())
        else:
            parts += [f"- {note}" for note in notes]
    text = "\n".join(parts) + "\n"

    return storage.write_text(path, text)
