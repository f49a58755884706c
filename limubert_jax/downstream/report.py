"""Markdown result tables laid out like the LIMU-BERT paper's Table 3, the tables and plot
of repeated draws and label-rate curves, and the report's TensorBoard run.

`results[dataset][method]` holds a metrics dict with at least "accuracy" and "macro_f1" as
fractions in [0, 1] (e.g. `evaluation.classification_metrics` output). The table has one
row per method and an "acc" / "F1" column pair per dataset, in percent with one decimal.
The best value of each column is bold (every method that ties at the shown precision);
a missing or non-finite value is shown as "—". A metrics dict of several draws also holds
`summary[metric]` (`stats.summary`: n, mean, sd, ci) and `per_seed[metric]` (one score per
draw): its cell shows "mean ± sd [lo, hi]" (the 95% t-interval of the mean, where there is
one), the mean bold where best.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from limubert_jax.downstream import stats
from limubert_jax.io import plots, storage

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


def _percent(value: float | None, signed: bool = False) -> str:
    return MISSING if value is None else f"{100.0 * value:{'+' if signed else ''}.1f}"


def _spread(entry: Mapping, metric: str, signed: bool = False) -> str:
    """" ± sd [lo, hi]" of a metric's summary over several draws, in percent; "" for one draw."""
    summary = (entry.get("summary") or {}).get(metric) if isinstance(entry, Mapping) else None
    if not summary or summary.get("sd") is None:
        return ""
    text = f" ± {100.0 * summary['sd']:.1f}"
    if summary.get("ci") is not None:
        lo, hi = summary["ci"]
        text += f" [{_percent(lo, signed)}, {_percent(hi, signed)}]"
    return text


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
                continue
            spread = _spread(results.get(column[0], {}).get(method), column[1])
            cells.append((f"**{text}**" if float(text) == best[column] else text) + spread)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_baseline(results: Mapping[str, Mapping], baselines: Sequence[str]) -> str | None:
    """The method of `baselines` (keys of `results`) with the highest mean accuracy (ties:
    macro-F1, then the order given); None when none of them has a score."""
    scored = [(m, results[m]) for m in baselines if isinstance(results.get(m), Mapping)
              and results[m].get("accuracy") is not None]
    if not scored:
        return None
    return max(scored, key=lambda item: (item[1]["accuracy"], item[1].get("macro_f1") or 0.0))[0]


def paired_comparisons(results: Mapping[str, Mapping], baseline: str) -> dict[str, dict[str, Any]]:
    """Each method of `results` (but `baseline`) minus `baseline`, draw by draw over the same
    draws (`per_seed` scores), per metric: `stats.paired` (n, mean, sd, ci of the
    difference). Methods without draws to pair (one draw, or a method that did not run) are
    left out."""
    reference = results[baseline].get("per_seed") or {}
    out = {}
    for method, entry in results.items():
        scores = entry.get("per_seed") if isinstance(entry, Mapping) else None
        if method == baseline or not scores:
            continue
        pairs = {metric: stats.paired(scores[metric], reference[metric]) for metric, _ in _METRICS
                 if len(scores.get(metric) or ()) >= 2 and len(scores[metric]) == len(reference.get(metric) or ())}
        if pairs:
            out[method] = pairs
    return out


def paired_markdown(comparisons: Mapping[str, Mapping[str, Mapping]], baseline: str) -> str:
    """`paired_comparisons` as a markdown table: one row per method, the mean difference
    in percentage points ± its sd [95% t-interval] per metric."""
    lines = [f"| method | against | {' | '.join(f'Δ {short} (points)' for _, short in _METRICS)} |",
             "|---|---|" + "---:|" * len(_METRICS)]
    for method, pairs in comparisons.items():
        cells = [method_display_name(method), method_display_name(baseline)]
        for metric, _ in _METRICS:
            pair = pairs.get(metric)
            cells.append(MISSING if pair is None else _percent(pair["mean"], signed=True)
                         + _spread({"summary": {metric: pair}}, metric, signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_markdown(points: Sequence[tuple[str, Mapping[str, Mapping]]], metric: str,
                   methods_order: Sequence[str] | None = None) -> str:
    """One metric over the points of a label-rate curve: a row per method, a column per
    point (`points`: (column heading, results by method)); cells "mean ± sd" in percent,
    the best mean of each column bold."""
    methods = list(methods_order) if methods_order is not None else list(
        dict.fromkeys(m for _, results in points for m in results))
    lines = ["| method | " + " | ".join(heading for heading, _ in points) + " |",
             "|---|" + "---:|" * len(points)]
    best = []
    for _, results in points:
        values = [f"{100.0 * v:.1f}" for m in methods if (v := _value({"": results}, "", m, metric)) is not None]
        best.append(max((float(v) for v in values), default=None))
    for method in methods:
        cells = [method_display_name(method)]
        for (_, results), top in zip(points, best):
            value = _value({"": results}, "", method, metric)
            if value is None:
                cells.append(MISSING)
                continue
            text = f"{100.0 * value:.1f}"
            summary = (results[method].get("summary") or {}).get(metric) or {}
            spread = f" ± {100.0 * summary['sd']:.1f}" if summary.get("sd") is not None else ""
            cells.append((f"**{text}**" if float(text) == top else text) + spread)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def label_rate_curve_png(path, xs: Sequence[float], x_label: str, series: Mapping[str, Sequence[Mapping | None]],
                         title: str = "") -> epath.Path:
    """Accuracy and macro-F1 (two panels, percent) against the label rate or the labels per
    class `xs` (P,): one line per method of `series` (method -> P metrics dicts, None where it
    did not run), with its 95% interval as a band where the points have one; a log x axis
    where the points span a factor of 10 or more."""
    plt = plots._pyplot()
    xs = np.asarray(xs, np.float64)
    fig, axes = plt.subplots(1, len(_METRICS), figsize=(5.2 * len(_METRICS), 4.0), squeeze=False)
    for ax, (metric, short) in zip(axes[0], _METRICS):
        for method, entries in series.items():
            shown = [(x, e) for x, e in zip(xs, entries) if isinstance(e, Mapping) and e.get(metric) is not None]
            if not shown:
                continue
            x = np.asarray([x for x, _ in shown])
            y = np.asarray([100.0 * e[metric] for _, e in shown])
            (line,) = ax.plot(x, y, marker="o", label=method_display_name(method))
            ci = [((e.get("summary") or {}).get(metric) or {}).get("ci") for _, e in shown]
            if all(c is not None for c in ci):
                ax.fill_between(x, [100.0 * c[0] for c in ci], [100.0 * c[1] for c in ci], color=line.get_color(),
                                alpha=0.2, linewidth=0)
        if xs.size and xs.min() > 0 and xs.max() / xs.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        name = "accuracy" if metric == "accuracy" else "macro-F1"
        ax.set_ylabel(f"test {name} (%)")
        ax.set_title(name + (" (bands: 95% t-intervals)" if ax.collections else ""))
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    try:
        return plots._save(fig, storage.as_path(path))
    finally:
        plt.close(fig)


def png_size(png: bytes) -> tuple[int, int]:
    """(height, width) of a PNG image from its header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return height, width


def write_tensorboard(logdir, *, text: str, images: Mapping[str, bytes],
                      sessions: Sequence[tuple[str, Mapping[str, Any], Mapping[str, float]]]) -> bool:
    """The report's TensorBoard run in `logdir` (an earlier report's replaced): the report
    as text, `images` (tag -> PNG bytes), and one HParams session per (method, point)
    (`sessions`: (name, hyperparameters, metrics)), so that runs of other settings, datasets
    or encoders compare side by side in the HParams dashboard. Returns False, with a
    warning, where TensorBoard events cannot be written (an object store without its client
    library); a report never fails for them."""
    from limubert_jax.pretraining import metrics as tb  # noqa: PLC0415  (tensorboardX: only where a report is written)

    path = storage.as_path(logdir)
    scheme = str(path).split("://")[0] if not storage.is_local(path) else None
    client = tb._TENSORBOARD_CLIENTS.get(scheme) if scheme else None
    if (scheme and client is None) or (client is not None and not tb._importable(client[0])):
        logging.warning("no TensorBoard events in %s: tensorboardX needs %s for it", path,
                        client[1] if client else "a local folder or gs:// / s3://")
        return False
    try:
        if path.exists():
            path.rmtree()  # this report's own run: a rerun replaces it
        writer_class = tb._summary_writer_class()
        from tensorboardX.proto.summary_pb2 import Summary  # noqa: PLC0415  (loaded with tensorboardX above)

        writer = writer_class(str(path))
        try:
            writer.add_text("report", text, 0)
            for tag, png in images.items():
                height, width = png_size(png)
                image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
                writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), 0)
            for name, hparams, metrics in sessions:
                clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
                writer.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None},
                                   name=name)
        finally:
            writer.close()
    except (ImportError, OSError) as e:
        logging.warning("no TensorBoard events in %s: %s", path, e)
        return False
    return True


def png_bytes(path) -> bytes:
    """The bytes of a PNG written by `plots` (local or an object-store path)."""
    return storage.as_path(path).read_bytes()



def write_sections(path, title: str, sections: Sequence[tuple[str | None, str]],
                   notes: str | Sequence[str] | None = None) -> epath.Path:
    """Writes `# title`, then each section ((heading or None, markdown)), then the notes (a
    paragraph, or a list of bullet points) to a markdown file. `path` is local or an
    object-store path; the file appears whole (`storage.write_text`). Returns the path."""
    parts = [f"# {title}"]
    for heading, body in sections:
        parts += ["", f"## {heading}"] if heading else []
        parts += ["", body.rstrip("\n")]
    if notes:
        parts += ["", "## Notes", ""] + ([notes.strip()] if isinstance(notes, str) else [f"- {note}" for note in notes])
    return storage.write_text(path, "\n".join(parts) + "\n")


def write_report(path, results: Mapping[str, Mapping[str, Mapping]], title: str,
                 notes: str | Sequence[str] | None = None, *, datasets_order: Sequence[str] | None = None,
                 methods_order: Sequence[str] | None = None) -> epath.Path:
    """Writes `# title`, the Table-3 layout and optional notes (`write_sections`) to a markdown
    file. Returns the path."""
    table = table3_markdown(results, datasets_order, methods_order).rstrip("\n")
    return write_sections(path, title, [(None, f"{table}\n\nAccuracy and macro-F1 in percent on the test split; "
                                               f"best per column in bold; {MISSING} = not run.")], notes)
