"""Exactness and training precision on whatever accelerator JAX finds, as one table.

    python benchmarks/accelerator_check.py --out /tmp/accel           # golden + embed CLI + tests + training
    python benchmarks/accelerator_check.py --out /tmp/accel --skip-tests --train-steps 20
    python benchmarks/accelerator_check.py --out /tmp/accel-smoke --smoke  # seconds on a CPU: does it run?

CPU tests cannot see matmul precision (XLA:CPU computes full float32 whatever is asked), so
this is the check to run on a GPU or TPU. In about 3 minutes on one GPU it:

* parity: converts each released PyTorch checkpoint (`tests/reference/weights`) and
  compares the encoder's embeddings, the reconstruction and the GRU classifier's logits
  with the original code's outputs (`golden/released_*.npz`), through the Python API and
  through the `embed` command (a subprocess, as a user runs it); tolerance 1e-4;
* tests: runs `pytest tests/test_golden.py tests/test_roundtrip.py tests/test_precision.py`
  (less its end-to-end dump test, which needs the datasets) on the same device;
* training: `--train-steps` steps of base_v1 pretraining (batch 128, BertAdam, the same
  synthetic windows and masks) at each `train.matmul_precision` and with bfloat16 compute:
  ms per step and how far each loss curve strays from full float32. On a CPU the reduced
  precisions are emulated by rounding every matmul operand (TF32: 10 mantissa bits,
  one bfloat16 pass: 7; `precision.emulate_operand_rounding`), which is what the
  accelerators' units do to their inputs. Each
  mode's row also gives the process's peak resident memory and the device's peak memory in
  use (`memory_stats()`, where the device keeps it), both the peaks up to that mode.

`--datasets` limits the parity rows to some of the released models. `--smoke` checks that the
script runs, in seconds on a CPU: parity of the HHAR model only, no pytest run, and 3 training
steps per mode of the benchmarks' smoke model (`harness.SMOKE_MODEL`) at batch 16, compiled
without XLA's optimizations.

Prints one markdown table (and writes `accelerator_check.json`, `accelerator_check.md` and
`training_precision.png` to `--out`); exits 1 when a parity row or a test failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from harness import REPO, log

RELEASED = ("hhar", "motion", "uci", "shoaib")
TOLERANCE = 1e-4
PRECISION_MODES = ("highest", "high", "default", "bfloat16")  # the last: compute_dtype bf16 at 'default'


def _memory_note(memory: dict) -> str:
    device = memory["peak_device_bytes"]
    return f"peak RSS {memory['peak_rss_mb']:.0f} MB" + ("" if device is None else f", device {device / 2**20:.0f} MB")


def _max_error(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def parity_rows(reference: Path, scratch: Path, datasets: tuple[str, ...] = RELEASED) -> list[dict]:
    """Released weights vs golden outputs through the API and the embed CLI."""
    import jax.numpy as jnp

    from limubert_jax import convert
    from limubert_jax.io import checkpoint
    from limubert_jax.models.encoder import LimuBertModel4Pretrain
    from limubert_jax.models.recurrent import GRUClassifier

    rows = []
    for name in datasets:
        golden = np.load(reference / "golden" / f"released_{name}.npz")
        bert_dir, gru_dir = scratch / f"limu_bert_{name}", scratch / f"gru_{name}"
        convert.from_torch(reference / "weights" / f"limu_bert_{name}_20_120.pt", bert_dir)
        convert.from_torch(reference / "weights" / f"gru_classifier_{name}_20_120.pt", gru_dir)
        _, config, params = checkpoint.load_model(bert_dir)
        model = LimuBertModel4Pretrain(config)
        variables = {"params": params}
        checks = {
            "embeddings (model.encode)": (model.apply(variables, golden["inputs"], method=model.encode),
                                          golden["embeddings"]),
            "reconstruction": (model.apply(variables, golden["inputs"]), golden["reconstruction"]),
            "masked reconstruction": (model.apply(variables, golden["mask_seqs"],
                                                  jnp.asarray(golden["masked_pos"], jnp.int32)),
                                      golden["reconstruction_masked"]),
        }
        _, gru_config, gru_params = checkpoint.load_model(gru_dir)
        checks["GRU classifier logits"] = (GRUClassifier(gru_config).apply({"params": gru_params},
                                                                          golden["classifier_windows"]),
                                           golden["classifier_logits"])
        np.save(scratch / f"{name}_inputs.npy", golden["inputs"])
        out = scratch / f"{name}_embeddings.npy"
        cli = subprocess.run([sys.executable, "-m", "limubert_jax.embed", "--checkpoint", str(bert_dir),
                              "--input", str(scratch / f"{name}_inputs.npy"), "--output", str(out),
                              "--input_normalized"], capture_output=True, text=True, check=False)
        for what, (got, want) in checks.items():
            error = _max_error(got, want)
            rows.append({"section": "parity", "check": f"{name}: {what}", "value": f"{error:.2e}",
                         "limit": f"{TOLERANCE:g}", "ok": error <= TOLERANCE})
        if cli.returncode == 0:
            error = _max_error(np.load(out), golden["embeddings"])
            rows.append({"section": "parity", "check": f"{name}: embed CLI", "value": f"{error:.2e}",
                         "limit": f"{TOLERANCE:g}", "ok": error <= TOLERANCE})
        else:
            rows.append({"section": "parity", "check": f"{name}: embed CLI", "ok": False, "limit": "exit 0",
                         "value": f"exit {cli.returncode}: {cli.stderr.strip().splitlines()[-1:]}"})
        log(f"parity {name}: done")
    return rows


def test_rows() -> list[dict]:
    """The golden, round-trip and precision test files under pytest on this device."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_golden.py",
               "tests/test_roundtrip.py", "tests/test_precision.py", "-k", "not every_program"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    summary = (result.stdout.strip().splitlines() or ["no output"])[-1]
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", summary))
    ok = result.returncode == 0 and counts.get("passed", 0) > 0
    if not ok:
        print(result.stdout[-4000:], result.stderr[-2000:], file=sys.stderr)
    return [{"section": "tests", "check": "pytest golden + round trip + precision", "value": summary,
             "limit": "all pass", "ok": ok, "seconds": round(time.perf_counter() - started, 1)}]


def training_rows(steps: int, out: Path, *, smoke: bool = False) -> list[dict]:
    """ms/step and the loss curve's distance from full float32 for each precision mode (base_v1
    at batch 128; with `smoke`, the smoke model at batch 16)."""
    import jax
    import jax.numpy as jnp

    from limubert_jax.data.synthetic import synthetic_windows
    from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig, LimuBertModel4Pretrain
    from limubert_jax.pretraining import optim
    from limubert_jax.pretraining.steps import MaskConfig, TrainState, jit_train_step
    from limubert_jax.runtime import precision, sharding

    cfg = LimuBertConfig(**harness.SMOKE_MODEL) if smoke else MODEL_CONFIGS["base_v1"]
    model_name = "the smoke model" if smoke else "base_v1"
    batch = harness.SMOKE_BATCH if smoke else 128
    windows = synthetic_windows(batch * 8, seed=7)
    mesh = sharding.make_mesh()
    accelerator = jax.default_backend() != "cpu"
    modes = [(m, None) for m in PRECISION_MODES]
    if not accelerator:  # reduced precision exists only emulated here
        modes = [("highest", None), ("tf32 (emulated)", precision.TF32_MANTISSA_BITS),
                 ("bf16 1-pass (emulated)", precision.BFLOAT16_MANTISSA_BITS)]
    curves, rows = {}, []
    for mode, emulate in modes:
        tx = optim.pretrain_optimizer("bert_adam", learning_rate=1e-3, total_steps=steps * 10, warmup=0.1)
        state = jax.device_put(TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), tx),
                               sharding.replicated(mesh))
        matmul_precision = "default" if mode == "bfloat16" else mode if emulate is None else "highest"
        # Emulated: every matmul of the step rounds its operands (forward and backward).
        context = precision.emulate_operand_rounding(emulate) if emulate else contextlib.nullcontext()
        with context:
            step = jit_train_step(mesh, model_config=cfg, mask_config=MaskConfig(), tx=tx,
                                  matmul_precision=matmul_precision,
                                  compute_dtype=jnp.bfloat16 if mode == "bfloat16" else jnp.float32)
            batches = [sharding.global_batch(windows[(i % 8) * batch:(i % 8 + 1) * batch], mesh) for i in range(steps)]
            losses, times = [], []
            for i in range(steps):
                started = time.perf_counter()
                state, metrics = step(state, batches[i], jax.random.key(1))
                losses.append(float(metrics["loss"]))  # waits for the step
                times.append(time.perf_counter() - started)
        curves[mode] = np.asarray(losses)
        ms = 1e3 * float(np.median(times[2:] if steps > 4 else times))
        drift = float(np.max(np.abs(curves[mode] / curves["highest"] - 1.0)))
        memory = harness.peak_memory()  # the process's peaks so far (the modes run in this order)
        rows.append({"section": "training", "check": f"matmul {mode}, {steps} steps", "value": f"{ms:.2f} ms/step",
                     "limit": f"loss vs float32: largest relative difference {drift:.2%}; {_memory_note(memory)}",
                     "ok": True, "ms_per_step": ms, "loss_drift": drift, "final_loss": losses[-1], **memory})
        log(f"training {mode}: {ms:.2f} ms/step, drift {drift:.2%}, {_memory_note(memory)}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        for mode, curve in curves.items():
            top.plot(curve, label=mode)
            bottom.plot(curve / curves["highest"] - 1.0, label=mode)
        top.set_ylabel("masked MSE")
        bottom.set_ylabel("relative to float32")
        bottom.set_xlabel("step")
        top.legend()
        top.set_title(f"{model_name} pretraining on {jax.devices()[0].device_kind}")
        fig.tight_layout()
        fig.savefig(out / "training_precision.png", dpi=100)
        plt.close(fig)
    except ImportError:
        pass
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| section | check | value | limit / note | ok |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['section']} | {r['check']} | {r['value']} | {r.get('limit', '')} | "
                     f"{'yes' if r['ok'] else '**NO**'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/accelerator-check"), help="where results go")
    parser.add_argument("--reference", type=Path,
                        default=Path(os.environ.get("LIMUBERT_REFERENCE_DIR") or REPO / "tests" / "reference"),
                        help="the reference directory (weights/, golden/); default: the repository's tests/reference")
    parser.add_argument("--train-steps", type=int, default=40,
                        help="pretraining steps per precision mode (3 with --smoke)")
    parser.add_argument("--skip-tests", action="store_true", help="skip the pytest run")
    parser.add_argument("--skip-parity", action="store_true", help="skip the released-weights comparison")
    parser.add_argument("--datasets", default=",".join(RELEASED),
                        help="comma-separated released models for the parity rows (hhar with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that the script runs: parity of hhar, no pytest run, 3 training steps "
                             "per mode of a small model at batch 16")
    args = harness.parse_args(parser, argv, {"train_steps": 3, "datasets": "hhar"})
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    if not datasets or set(datasets) - set(RELEASED):
        parser.error(f"--datasets: comma-separated, of {', '.join(RELEASED)}")
    if args.train_steps < 0:
        parser.error("--train-steps must be >= 0")
    args.out.mkdir(parents=True, exist_ok=True)
    harness.use_checkout()
    import jax

    device = jax.devices()[0]
    header = (f"## limubert-jax on {jax.default_backend()}: {device.device_kind} (x{jax.device_count()}), "
              f"JAX {jax.__version__}, Python {sys.version.split()[0]}")
    log(header)
    rows: list[dict] = []
    if not args.skip_parity:
        if (args.reference / "golden").is_dir():
            with tempfile.TemporaryDirectory() as scratch:
                rows += parity_rows(args.reference, Path(scratch), datasets)
        else:
            rows.append({"section": "parity", "check": "released weights", "value": "skipped",
                         "limit": f"no reference at {args.reference}", "ok": True})
    if not (args.skip_tests or args.smoke):
        rows += test_rows()
    if args.train_steps > 0:
        rows += training_rows(args.train_steps, args.out, smoke=args.smoke)
    table = markdown(rows, header)
    print(table)
    (args.out / "accelerator_check.md").write_text(table + "\n")
    (args.out / "accelerator_check.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
