"""The benchmarks' own logic, without training anything real: the whole-job arithmetic and
tables of `benchmarks/pretrain_throughput.py`, its process launcher, the reference
pretraining job's arguments (the job itself runs in tests/test_benchmark_smoke.py), and
`benchmarks/gpu_variants.py` on a CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    # The scripts import their sibling modules (harness.py) as `python benchmarks/X.py` lets them.
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return _load("pretrain_throughput")


@pytest.fixture(scope="module")
def reference():
    return _load("reference_pretrain")


def test_epoch_cost_cancels_startup(throughput):
    # 10 s of startup and 5 s per epoch: 2 epochs take 20 s, 6 take 40 s.
    cost = throughput.epoch_cost(2, 20.0, 6, 40.0)
    assert cost["per_epoch_s"] == pytest.approx(5.0)
    assert cost["startup_s"] == pytest.approx(10.0)
    for bad in ((2, 20.0, 2, 30.0), (6, 40.0, 2, 20.0), (0, 5.0, 2, 20.0)):
        with pytest.raises(ValueError):
            throughput.epoch_cost(*bad)


def test_epoch_ratio(throughput):
    assert throughput.epoch_ratio(10.0, 4.0) == pytest.approx(2.5)
    assert throughput.epoch_ratio(None, 4.0) is None
    assert throughput.epoch_ratio(10.0, -0.1) is None  # noise larger than the epochs: no ratio


def _run(side, epochs, wall, rss, tag="r0", **extra):
    return {"side": side, "epochs": epochs, "wall_s": wall, "peak_rss_mb": rss, "tag": tag,
            "load_avg_1min": [0.1, 0.2], **extra}


def _batch(throughput, batch=128):
    runs = [
        _run("reference", 2, 23.0, 400.0, script={"epoch_seconds": [10.0, 10.0], "train_windows": 1670,
                                                   "vali_windows": 208, "steps_per_epoch": 13}),
        _run("limubert_jax", 2, 18.0, 900.0, time_to_first_step_s=6.0, peak_device_bytes=None,
             epoch_seconds=[6.0, 5.0]),
        _run("reference", 6, 63.0, 410.0, script={"epoch_seconds": [10.0] * 6}),
        _run("limubert_jax", 6, 38.0, 950.0, time_to_first_step_s=7.0, peak_device_bytes=3 * 2**20,
             epoch_seconds=[6.0] + [5.0] * 5),
    ]
    first = _run("limubert_jax", 2, 40.0, 1200.0, tag="first", time_to_first_step_s=28.0, peak_device_bytes=None)
    return throughput.summarize_batch(batch, 2, 6, runs, [first], windows=2088)


def test_summarize_batch(throughput):
    b = _batch(throughput)
    assert b["reference"]["per_epoch_s"] == pytest.approx(10.0)
    assert b["reference"]["startup_s"] == pytest.approx(3.0)
    assert b["limubert_jax"]["per_epoch_s"] == pytest.approx(5.0)
    assert b["limubert_jax"]["startup_s"] == pytest.approx(8.0)
    assert b["limubert_jax"]["first_run"]["startup_s"] == pytest.approx(30.0)  # 40 s - 2 x 5 s
    assert b["limubert_jax"]["time_to_first_step_s"] == pytest.approx(6.5)
    assert b["limubert_jax"]["peak_rss_mb"] == 950.0 and b["reference"]["peak_rss_mb"] == 410.0
    assert b["limubert_jax"]["peak_device_bytes"] == 3 * 2**20 and b["reference"]["peak_device_bytes"] is None
    assert b["limubert_jax"]["script_epoch_s_median"] == pytest.approx(5.0)
    assert b["ratio"] == pytest.approx(2.0) and b["goal"] == 2.0
    assert b["wall_ratio"]["6"] == pytest.approx(63.0 / 38.0)
    assert b["repeat_ratios"] == [pytest.approx(2.0)]
    json.dumps(b)  # goes into the JSON as it is


def test_repeat_ratios_show_the_spread_the_medians_hide(throughput):
    # Repeat r0: reference 10 s / epoch, limubert_jax 5; r1: 12 and 4 (3x); r2 lacks a run.
    runs = [_run("reference", 2, 23.0, 1.0), _run("limubert_jax", 2, 18.0, 1.0),
            _run("reference", 6, 63.0, 1.0), _run("limubert_jax", 6, 38.0, 1.0),
            _run("reference", 2, 27.0, 1.0, tag="r1"), _run("limubert_jax", 2, 16.0, 1.0, tag="r1"),
            _run("reference", 6, 75.0, 1.0, tag="r1"), _run("limubert_jax", 6, 32.0, 1.0, tag="r1"),
            _run("reference", 2, 20.0, 1.0, tag="r2")]
    assert throughput.repeat_ratios(runs, 2, 6) == [pytest.approx(2.0), pytest.approx(3.0)]
    b = throughput.summarize_batch(128, 2, 6, runs, [], windows=2088)
    row = next(line for line in throughput.whole_job_table(b).splitlines() if "each repeat" in line)
    assert row.endswith("2.00 / 2.50 / 3.00x")


def test_whole_job_table_and_line(throughput):
    b128, b32 = _batch(throughput, 128), _batch(throughput, 32)
    table = throughput.whole_job_table(b128)
    lines = table.splitlines()
    assert "batch 128" in lines[0] and "1670 train / 208 validation" in lines[0]
    per_epoch = next(line for line in lines if line.startswith("seconds per epoch"))
    assert per_epoch.split()[-3:] == ["10.00", "5.00", "2.00x"]
    assert "8.0" in next(line for line in lines if line.startswith("startup seconds: rerun"))
    assert next(line for line in lines if "each repeat" in line).endswith("2.00 / 2.00 / 2.00x")
    assert "30.0" in next(line for line in lines if line.startswith("startup seconds: first run"))
    assert "6.5 / 28.0" in table
    assert next(line for line in lines if line.startswith("peak host RSS")).split()[-2:] == ["410", "950"]
    assert next(line for line in lines if line.startswith("peak device memory")).split()[-2:] == ["-", "3"]
    assert len({len(line) for line in lines[2:]}) == 1  # aligned columns
    assert throughput.whole_job_line([b128, b32]) == \
        "whole job, batch 128: 2.00x (goal 2.0x); batch 32: 2.00x (goal 1.5x)"
    b32.pop("reference")
    b32["ratio"] = None
    assert "batch 32: n/a (goal 1.5x)" in throughput.whole_job_line([b32])
    assert "seconds per epoch" in throughput.whole_job_table(b32)  # limubert_jax alone (--skip-torch)
    b128["reference"]["startup_s"] = -4.6  # run lengths too close for the machine's noise
    assert next(line for line in throughput.whole_job_table(b128).splitlines()
                if line.startswith("startup seconds: rerun")).split()[-2:] == ["noise", "8.0"]


def test_throughput_flags(throughput):
    args = throughput.parse_args([])
    assert args.whole_job_batch_sizes == (128, 32) and args.whole_job_epochs == (2, 6)
    assert args.whole_job_windows == 2088 and not args.skip_whole_job and not args.whole_job_only
    assert throughput.parse_args(["--whole-job-batch-sizes", "64"]).whole_job_batch_sizes == (64,)
    for bad in (["--whole-job-epochs", "6,2"], ["--whole-job-epochs", "2"], ["--whole-job-batch-sizes", "0"],
                ["--skip-whole-job", "--whole-job-only"], ["--whole-job-windows", "100"]):
        with pytest.raises(SystemExit):
            throughput.parse_args(bad)


def test_launch_reports_the_childs_own_peak_memory(throughput, tmp_path):
    code = "b = bytearray(120 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('done')"
    record = throughput.launch([sys.executable, "-c", code], log_path=tmp_path / "child.log", cwd=tmp_path)
    assert record["returncode"] == 0 and record["wall_s"] > 0
    assert record["peak_rss_mb"] >= 120
    assert (tmp_path / "child.log").read_text().strip() == "done"
    failed = throughput.launch([sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "f.log", cwd=tmp_path)
    assert failed["returncode"] == 3
    with pytest.raises(SystemExit, match="exit 3"):
        throughput._check_exit(failed, "the child")


def test_jax_child_environment(throughput, monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere")
    env = throughput._jax_env(tmp_path)
    assert "JAX_COMPILATION_CACHE_DIR" not in env and env["LIMUBERT_XLA_CACHE"] == str(tmp_path)


def test_jax_epoch_seconds_from_metrics(throughput, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "samples_per_second": 128 * 13 / t})
                              for s, t in ((13, 4.0), (26, 2.0))) + "\n")
    assert throughput._jax_epoch_seconds(path, 128) == pytest.approx([4.0, 2.0])
    assert throughput._jax_epoch_seconds(tmp_path / "missing.jsonl", 128) == []


def test_reference_split_is_the_projects(reference):
    from limubert_jax.data import splits

    state = np.random.get_state()
    try:
        for got, want in zip(reference.reference_split(2088, 3431, 0.8, 0.1), splits.pretrain_split(2088)):
            np.testing.assert_array_equal(got, want)
    finally:
        np.random.set_state(state)


def test_reference_base_v1_is_the_projects(reference):
    import dataclasses

    from limubert_jax.models.encoder import MODEL_CONFIGS

    assert dataclasses.asdict(reference.MODELS["base_v1"]) == MODEL_CONFIGS["base_v1"].to_dict()


def test_reference_argument_validation(reference, tmp_path):
    data = tmp_path / "data_20_120.npy"
    np.save(data, np.zeros((4, 120, 6), np.float32))
    common = ["--data", str(data), "--save", str(tmp_path / "out")]
    assert reference.parse_args(common + ["--epochs", "1"]).batch_size == 128
    for bad in (["--epochs", "0"], ["--epochs", "1", "--batch-size", "0"], ["--epochs", "1", "--threads", "-1"],
                ["--epochs", "1", "--train-rate", "0.95"], ["--epochs", "1", "--model", "huge"]):
        with pytest.raises(SystemExit):
            reference.parse_args(common + bad)
    with pytest.raises(SystemExit):
        reference.parse_args(["--data", str(tmp_path / "missing.npy"), "--save", "x", "--epochs", "1"])
    with pytest.raises(SystemExit):
        reference.parse_args(["--data", str(data), "--epochs", "1"])  # --save is required


# benchmarks/gpu_variants.py: the GPU speed variants, checked on CPU at smoke sizes.


@pytest.fixture(scope="module")
def gpu_variants():
    return _load("gpu_variants")


# Runs gpu_variants.py as __main__ in a Python where the packages the GPU image lacks cannot be
# imported (a meta-path finder refuses them and records every attempt, also one a library would
# catch), and reports the attempts at exit.
_WITHOUT_GPU_IMAGE_MISSING = """
import atexit, importlib.abc, runpy, sys
unavailable, attempts = set({unavailable!r}), []
class Unavailable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in unavailable:
            attempts.append(name)
            raise ModuleNotFoundError(name + " is not installed on the GPU image")
        return None
sys.meta_path.insert(0, Unavailable())
sys.path.insert(0, {script_dir!r})  # as `python SCRIPT` puts the script's folder first
atexit.register(lambda: print("UNAVAILABLE_IMPORTS_ATTEMPTED", sorted(set(attempts)), file=sys.stderr))
sys.argv = [{script!r}, *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_gpu_variants_smoke_without_the_packages_the_gpu_image_lacks(gpu_variants, tmp_path):
    ran = ("f32_highest", "bf16_fused_pad32")  # each variant compiles for seconds: the reference and one patched
    argv = ["--smoke", "--in-process", "--out", str(tmp_path), "--variants", ",".join((*ran, "bf16_cmdbuf_unrolled"))]
    code = _WITHOUT_GPU_IMAGE_MISSING.format(unavailable=gpu_variants.UNAVAILABLE_ON_GPU_IMAGE,
                                             script=str(BENCHMARKS / "gpu_variants.py"), script_dir=str(BENCHMARKS),
                                             argv=argv)
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}  # its programs serve no other test
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UNAVAILABLE_IMPORTS_ATTEMPTED []" in proc.stderr

    rows = {r["variant"]: r for r in json.loads((tmp_path / "gpu_variants.json").read_text())["results"]}
    assert list(rows) == [v.name for v in gpu_variants.VARIANTS]  # every variant has its row, in order
    assert {name for name, r in rows.items() if r["status"] == "ok"} == set(ran)
    for name, r in rows.items():
        if name not in ran:
            assert r["status"] == "skipped" and r["reason"], name
    assert "XLA flags" in rows["bf16_cmdbuf_unrolled"]["reason"]  # needs a child process
    assert rows["f32_highest"]["loss_deviation"] == 0.0
    for name in ran:
        r = rows[name]
        assert r["finite"] and r["loss_ok"] and r["loss_deviation"] < gpu_variants.LOSS_TOLERANCE, name
        assert r["windows_per_s"] > 0 and r["projected_full_s"] > r["compile_s"] > 0 and r["batch_size"] == 16
    assert rows["bf16_fused_pad32"]["attention"] == "dot_product_attention xla, head 32"  # no cuDNN on CPU

    text = (tmp_path / "gpu_variants.md").read_text()
    assert text.strip() in proc.stdout  # the printed table is the file's
    lines = text.splitlines()
    assert lines[1].startswith("device: cpu") and "jax " in lines[1] and "Python " in lines[1]
    assert lines[2].startswith("command: ") and "--smoke" in lines[2]
    table = [line for line in lines if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in table[1:]] == list(rows)
    deviation_column = table[0].split(" | ").index("vs f32_highest")
    for line in table[1:]:
        if line.split(" | ")[0][2:] in ran:
            assert line.split(" | ")[deviation_column].endswith("%")
    assert (tmp_path / "gpu_variants.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_padded_fused_attention_is_the_encoders(gpu_variants):
    import jax
    import jax.numpy as jnp

    from limubert_jax.models import encoder

    rng = np.random.default_rng(0)
    batch, seq, heads, head = 3, 120, 4, 18  # base_v1's heads
    qkv = jnp.asarray(rng.normal(size=(batch, seq, 3 * heads * head)), jnp.float32)
    positions = jnp.asarray(np.stack([rng.choice(seq, 18, replace=False) for _ in range(batch)]), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(batch, seq, heads * head)), jnp.float32)

    def value_and_grad(attention, rows):
        # the output and the gradient of a weighted sum of it: training differentiates through the padding
        def weighted(x):
            out = attention(x, heads, rows)
            return jnp.sum(out * weights[:, : out.shape[1]]), out

        (_, out), grad = jax.jit(jax.value_and_grad(weighted, has_aux=True))(qkv)
        return out, grad

    with jax.default_matmul_precision("highest"):
        for rows in (None, positions):
            want, want_grad = value_and_grad(encoder.attention, rows)
            assert want.shape == (batch, seq if rows is None else 18, heads * head)
            for head_size in (24, 32):
                got, got_grad = value_and_grad(gpu_variants.fused_attention(head_size, "xla"), rows)
                # Zero padding adds exact zeros to every dot product; what remains is float32
                # rounding in another summation order (scores up to ~15 here, values ~1).
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="head size 16"):
        gpu_variants.fused_attention(16, "xla")(qkv, heads)


def test_flat_bert_adam_is_the_packages(gpu_variants):
    import jax
    import optax

    from limubert_jax.pretraining import optim

    rng = np.random.default_rng(0)
    shapes = {"fc": {"bias": (3,), "kernel": (4, 3)}, "linear": {"bias": (5,), "kernel": (3, 5)}, "pos_embed": (7, 2)}

    def draw(scale):  # a tree shaped like `shapes`
        return jax.tree.map(lambda s: (scale * rng.normal(size=s)).astype(np.float32), shapes,
                            is_leaf=lambda s: isinstance(s, tuple))

    start = draw(1.0)
    schedule = dict(learning_rate=1e-2, total_steps=10, warmup=0.2)  # a ramp of 2 steps, then the decay
    txs = optim.pretrain_optimizer("bert_adam", **schedule), gpu_variants.flat_bert_adam(start, **schedule)
    params = [start, start]
    states = [tx.init(p) for tx, p in zip(txs, params)]
    moments = jax.tree.leaves(states[1])
    assert len({id(m) for m in moments}) == len(moments)  # the train step donates each buffer once
    for step in range(4):
        grads = draw(3.0 if step % 2 else 0.1)  # large ones: clipped; small ones: not
        updates = []
        for i, tx in enumerate(txs):
            update, states[i] = jax.jit(tx.update)(grads, states[i], params[i])
            params[i] = optax.apply_updates(params[i], update)
            updates.append(update)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), *updates)
        assert not np.any(updates[1]["fc"]["kernel"])  # the unused head stays frozen
    assert np.any(updates[1]["linear"]["kernel"])


def test_gpu_variants_flags(gpu_variants):
    args = gpu_variants.parse_args(["--out", "x"])
    assert (args.windows, args.batch_size, args.epochs, args.in_process) == (7333, 128, 3, False)
    assert args.variants.split(",") == [v.name for v in gpu_variants.VARIANTS]
    assert gpu_variants.VARIANTS[0].name == gpu_variants.REFERENCE  # the loss reference runs first
    smoke = gpu_variants.parse_args(["--out", "x", "--smoke", "--epochs", "2"])
    assert (smoke.windows, smoke.batch_size, smoke.epochs) == (64, 16, 2)
    for bad in (["--variants", "f32_highest,fastest"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit):
            gpu_variants.parse_args(["--out", "x", *bad])
