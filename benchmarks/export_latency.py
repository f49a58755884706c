"""File size and single-window latency of the exported models: ONNX Runtime, JAX and PyTorch.

    python benchmarks/export_latency.py --out /tmp/limubert-export                # base_v1 + LIMU-GRU, random weights
    python benchmarks/export_latency.py --model RUN_DIR --out /tmp/limubert-export  # a trained classify run
    python benchmarks/export_latency.py --smoke --out /tmp/limubert-export-smoke   # does it run? (seconds)

Two models, each exported the ways a user ships it:

* the encoder alone (LIMU-BERT base_v1: 120 x 6 raw readings -> 120 x 72 embeddings):
  `convert to_onnx` of the pretrained checkpoint, and the standalone PyTorch file's
  `LIMUBertModel4Pretrain` encoder;
* the LIMU-GRU pipeline of a classify run (normalization, encoder, six 20-step sub-windows,
  GRU, mean of the sub-windows' probabilities): `convert to_onnx` of the run, `convert
  to_torch` (.pt + .json, and .safetensors) loaded by `limubert_jax/export/limubert_torch.py`,
  `limubert_jax.predict`'s jitted program, and (with the `tflite` extra) `convert to_tflite`
  at batch 1 run by the LiteRT interpreter.

Latency is one window at a time (batch 1), as an app classifies the window it just
recorded: the median and 90th percentile over `--repeats` calls after `--warmup` calls, on
ONE CPU thread for every runtime (ONNX Runtime intra/inter-op threads 1,
`torch.set_num_threads(1)`, XLA:CPU without its thread pool), inputs already in memory,
outputs copied back to NumPy. After each row the process's peak resident memory so far
(`ru_maxrss`) and the JAX device's peak memory in use (where it keeps statistics) are
recorded. Sizes are the files' bytes on disk. Without `--model` the
weights are random (a run's weights do not change the work); the model is then saved as a
classify run would save it. Writes `export_latency.json` and `export_latency.png` to `--out`
and prints a table. The machine should be otherwise idle (the load average is recorded).
`--smoke` checks that the script runs: the benchmarks' smoke model (`harness.SMOKE_MODEL`),
5 calls per row after 2, no TFLite conversion; never a timing.
"""

from __future__ import annotations

import os

# One thread for XLA:CPU, set before JAX is imported (it reads XLA_FLAGS once).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                           "intra_op_parallelism_threads=1").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import harness  # noqa: E402
from harness import REPO  # noqa: E402


def _timings(fn, x, warmup: int, repeats: int) -> dict[str, float]:
    # Each runtime's call returns host arrays: its work is done when it returns.
    ms = np.asarray(harness.call_seconds(lambda: fn(x), repeats, warmup)) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "calls": repeats,
            **harness.peak_memory()}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _make_models(out: Path, smoke: bool = False) -> tuple[Path, Path]:
    """A base_v1 (`smoke`: the smoke model) LIMU-BERT checkpoint and a classify run behind it
    (gru_v2, 6 classes), random weights."""
    import jax

    from limubert_jax.io import checkpoint
    from limubert_jax.models import pipeline, registry
    from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig, LimuBertModel4Pretrain
    from limubert_jax.models.pipeline import ClassifierPipelineConfig

    encoder = LimuBertConfig(**harness.SMOKE_MODEL) if smoke else MODEL_CONFIGS["base_v1"]
    params = LimuBertModel4Pretrain(encoder).init_params(jax.random.key(0))
    encoder_dir = checkpoint.save_model(out / "encoder", params, encoder, overwrite=True)
    config = ClassifierPipelineConfig(
        method="limu_gru_v2", head="gru_v2", class_names=("sit", "stand", "walk", "upstairs", "downstairs", "run"),
        label="activity", seq_len=encoder.seq_len, merge=20, feature_num=encoder.feature_num, encoder=encoder,
        sampling_rate_hz=20.0, dataset="random weights")
    head = registry.init_classifier(config.head_module(), jax.random.key(1), seq_len=config.merge,
                                    input_dim=config.head_input_dim)
    run = out / "run"
    checkpoint.save_model(run / pipeline.MODEL_DIR, {"encoder": {"transformer": params["transformer"]}, "head": head},
                          config, overwrite=True)
    return encoder_dir, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a classify run (RUN_DIR or its model/); default: base_v1 + gru_v2, random")
    parser.add_argument("--encoder", help="the pretrained checkpoint for the encoder rows (default: the run's encoder)")
    parser.add_argument("--out", default="/tmp/limubert-export", help="folder for the exported files and results")
    parser.add_argument("--warmup", type=int, default=50, help="calls before timing (2 with --smoke)")
    parser.add_argument("--repeats", type=int, default=500, help="timed calls (5 with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that the script runs: the smoke model, few calls, no TFLite")
    args = harness.parse_args(parser, argv, {"warmup": 2, "repeats": 5})
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    if args.smoke and args.model:
        parser.error("--smoke makes its own models; leave out --model")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import jax
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(REPO / "limubert_jax" / "export"))
    import limubert_torch  # the standalone file, as a user copies it

    from limubert_jax import convert, predict
    from limubert_jax.export import onnx_export
    from limubert_jax.io import checkpoint
    from limubert_jax.models import inference, pipeline

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    if args.model:
        run = Path(args.model)
        encoder_dir = Path(args.encoder) if args.encoder else None
    else:
        encoder_dir, run = _make_models(out, args.smoke)
    classifier = predict.load_classifier(run)
    config = classifier.config
    if encoder_dir is None:  # the run's own encoder, saved as a LIMU-BERT checkpoint for the encoder rows
        raise SystemExit("--encoder is needed with --model (the pretrained checkpoint the run used)")

    files = {
        "encoder.onnx": out / "encoder.onnx", "classifier.onnx": out / "classifier.onnx",
        "classifier.pt": out / "classifier.pt", "classifier.safetensors": out / "classifier.safetensors",
    }
    onnx_export.export_onnx(encoder_dir, files["encoder.onnx"], overwrite=True)
    onnx_export.export_onnx(run, files["classifier.onnx"], overwrite=True)
    convert.to_torch(run, files["classifier.pt"], overwrite=True)
    convert.to_torch(encoder_dir, out / "encoder.pt", overwrite=True)
    convert.to_torch(run, files["classifier.safetensors"], overwrite=True, format="safetensors")
    sizes = {name: _size(path) for name, path in files.items()}
    sizes["classifier.json"] = _size(files["classifier.pt"].with_suffix(".json"))
    sizes["encoder.pt (+ decoder, as released)"] = _size(out / "encoder.pt")
    sizes["model/ (Orbax checkpoint)"] = _size(Path(predict.model_dir(run)))

    rng = np.random.default_rng(0)
    window = rng.normal(0, 1, (1, config.seq_len, config.feature_num)).astype(np.float32)
    window[..., 2] += 9.8

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sessions = {name: ort.InferenceSession(str(files[name]), options, providers=["CPUExecutionProvider"])
                for name in ("encoder.onnx", "classifier.onnx")}

    kind, encoder_config, encoder_params = checkpoint.load_model(encoder_dir)
    encoder_params = jax.device_put(encoder_params)
    torch_pipeline = limubert_torch.load_pipeline(str(files["classifier.pt"]))
    torch_bert = limubert_torch.LIMUBertModel4Pretrain(**encoder_config.to_dict()).eval()
    torch_bert.load_state_dict(torch.load(out / "encoder.pt", weights_only=True), strict=True)

    def jax_encoder(x):  # what `limubert-embed` runs: the input checks, then normalization + encoder jitted
        return inference.embed_windows(encoder_params, encoder_config, x, batch_size=1)

    def jax_pipeline(x):  # the jitted program `limubert-predict` runs
        return np.asarray(pipeline.predict_batch(classifier.params, x, config=config)["probabilities"])

    def torch_encoder(x):
        return torch_bert.encode(limubert_torch.normalize(x, encoder_config.feature_num))

    def torch_run(module):
        def call(x):
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()
        return call

    def ort_run(name):
        session = sessions[name]
        return lambda x: session.run(None, {"windows": x})

    tflite = None
    try:
        if args.smoke:
            raise RuntimeError("not converted in a smoke run (the conversion takes minutes)")
        from limubert_jax.export import tflite_export

        files["classifier.tflite"] = out / "classifier.tflite"
        tflite_export.export_tflite(run, files["classifier.tflite"], batch=1, overwrite=True)
        sizes["classifier.tflite"] = _size(files["classifier.tflite"])
        interpreter = tflite_export.interpreter_class()(model_content=files["classifier.tflite"].read_bytes(),
                                                          num_threads=1)
        runner = interpreter.get_signature_runner(tflite_export.SIGNATURE)
        tflite = lambda x: runner(windows=x)  # noqa: E731
    except Exception as e:  # noqa: BLE001  (the tflite extra is optional)
        print(f"TFLite skipped: {str(e).splitlines()[0]}", file=sys.stderr)

    latency = {
        "encoder": {"onnxruntime": _timings(ort_run("encoder.onnx"), window, args.warmup, args.repeats),
                    "jax": _timings(jax_encoder, window, args.warmup, args.repeats),
                    "pytorch": _timings(torch_run(torch_encoder), window, args.warmup, args.repeats)},
        "limu_gru pipeline": {"onnxruntime": _timings(ort_run("classifier.onnx"), window, args.warmup, args.repeats),
                              "jax": _timings(jax_pipeline, window, args.warmup, args.repeats),
                              "pytorch": _timings(torch_run(torch_pipeline), window, args.warmup, args.repeats)},
    }
    if tflite is not None:
        latency["limu_gru pipeline"]["tflite (LiteRT)"] = _timings(tflite, window, args.warmup, args.repeats)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0]},
        "versions": {"jax": jax.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "litert": _version("ai-edge-litert")},
        "model": {"run": str(run), "method": config.method, "seq_len": config.seq_len, "merge": config.merge,
                  "feature_num": config.feature_num, "classes": config.num_classes,
                  "parameters": int(sum(np.asarray(v).size for v in jax.tree.leaves(classifier.params)))},
        "threads": 1, "batch": 1, "sizes_bytes": sizes, "latency": latency,
    }
    print(f"{'file':<28}{'bytes':>10}")
    for name, size in sizes.items():
        print(f"{name:<28}{size:>10,}")
    print(f"\n{'model':<20}{'runtime':<16}{'median ms':>10}{'p90 ms':>9}{'vs PyTorch':>12}{'peak RSS MB':>13}"
          f"{'device MB':>11}   (1 CPU thread, batch 1)")
    for model, runtimes in latency.items():
        torch_ms = runtimes["pytorch"]["median_ms"]
        for runtime, t in runtimes.items():
            t["speedup_vs_pytorch"] = torch_ms / t["median_ms"]
            device = "-" if t["peak_device_bytes"] is None else f"{t['peak_device_bytes'] / 2**20:.0f}"
            print(f"{model:<20}{runtime:<16}{t['median_ms']:>10.3f}{t['p90_ms']:>9.3f}{t['speedup_vs_pytorch']:>11.2f}x"
                  f"{t['peak_rss_mb']:>13.0f}{device:>11}")
    print("(peak memory: the process's peaks up to the end of each row; the rows run in this order, all exports "
          "loaded before the first)")
    (out / "export_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(out / "export_latency.png", latency, sizes)
    print(f"\nload average {load_before:.2f} -> {result['machine']['load_after']:.2f}; "
          f"wrote {out / 'export_latency.json'}")
    return 0


def _plot(path: Path, latency: dict, sizes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels, medians, p90s = [], [], []
    for model, runtimes in latency.items():
        for runtime, t in runtimes.items():
            labels.append(f"{model}\n{runtime}")
            medians.append(t["median_ms"])
            p90s.append(t["p90_ms"])
    y = np.arange(len(labels))
    axes[0].barh(y, p90s, color="#c6dbef", label="p90")
    axes[0].barh(y, medians, color="#2171b5", label="median")
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("ms per window (1 CPU thread, batch 1)")
    axes[0].legend()
    names = list(sizes)
    axes[1].barh(np.arange(len(names)), [sizes[n] / 1024 for n in names], color="#41ab5d")
    axes[1].set_yticks(np.arange(len(names)), names, fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("KiB on disk")
    fig.suptitle("Exported LIMU-BERT models: latency and size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
