"""Every benchmark script runs: each one's `--smoke` mode as a subprocess (tiny sizes, the
benchmarks' smoke model), checked for exit 0 and the table and JSON it writes; and the
project names the scripts use exist and are public, so that a refactor breaks this test
rather than a run on a lent accelerator.

The scripts run two at a time from a module fixture, the longest first, and each test waits
for its own: they are mostly interpreter start-up, imports and waiting for their own child
processes, so that two overlap well on one pytest worker. They share the session's
persistent XLA cache (conftest.py)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# script -> extra arguments after `--smoke --out DIR` (run in the module's folder), the longest
# run first. gpu_variants.py's smoke run is tested in test_benchmarks.py (without the
# packages the GPU image lacks); reference_pretrain.py runs inside pretrain_throughput.py's
# whole job, whose scratch folder the run keeps for `test_pretrain_throughput` to read.
SMOKE_RUNS = {
    "pretrain_throughput": ["--whole-job-dir", "whole-job"],
    "accelerator_check": [],
    "streaming_pretraining": [],
    "full_pretraining": [],
    "export_latency": [],
    "input_pipeline": [],
}
AT_ONCE = 2
TESTED_ELSEWHERE = {"gpu_variants", "reference_pretrain"}
MODULES = {"harness", "reference_pipeline"}  # imported by the scripts, not run


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """{script: ({returncode, stdout, stderr}, out dir)}: every smoke run, `AT_ONCE` at a time."""
    root = tmp_path_factory.mktemp("smoke")
    # One compute thread per process: two runs at a time beside the suite's other worker
    # already fill the cores, and spinning thread pools would only take turns on them.
    env = child_env()
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    env["OMP_NUM_THREADS"] = "1"
    waiting, running, results = list(SMOKE_RUNS), {}, {}
    deadline = time.monotonic() + 600
    try:
        while waiting or running:
            while waiting and len(running) < AT_ONCE:
                name = waiting.pop(0)
                out, log = root / name, root / f"{name}.log"
                with (root / f"{name}.stdout").open("w") as stdout, log.open("w") as stderr:
                    running[name] = subprocess.Popen(
                        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", "--out", str(out),
                         *SMOKE_RUNS[name]], stdout=stdout, stderr=stderr, cwd=root, env=env)
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    results[name] = ({"returncode": proc.returncode,
                                      "stdout": (root / f"{name}.stdout").read_text(errors="replace"),
                                      "stderr": (root / f"{name}.log").read_text(errors="replace")}, root / name)
            assert time.monotonic() < deadline, f"smoke runs still running after 600 s: {sorted(running)}"
            time.sleep(0.1)
    finally:
        for proc in running.values():
            proc.kill()
    return results


def _finished(smoke_runs, name: str):
    run, out = smoke_runs[name]
    assert run["returncode"] == 0, f"{name}.py --smoke failed:\n{run['stderr'][-3000:]}"
    return run["stdout"], out


def test_every_script_has_a_smoke_run():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")}
    assert scripts - MODULES == set(SMOKE_RUNS) | TESTED_ELSEWHERE
    for name in set(SMOKE_RUNS) | {"gpu_variants"}:
        assert "--smoke" in (BENCHMARKS / f"{name}.py").read_text(), name


def test_accelerator_check(smoke_runs):
    stdout, out = _finished(smoke_runs, "accelerator_check")
    rows = json.loads((out / "accelerator_check.json").read_text())["rows"]
    assert all(r["ok"] for r in rows)
    parity = [r for r in rows if r["section"] == "parity"]
    assert parity and all(r["check"].startswith("hhar:") for r in parity)
    training = {r["check"]: r for r in rows if r["section"] == "training"}
    assert list(training) == ["matmul highest, 3 steps", "matmul tf32 (emulated), 3 steps",
                              "matmul bf16 1-pass (emulated), 3 steps"]
    # The emulation reaches the model's matmuls: rounded operands move the loss, fewer bits more.
    drift = [r["loss_drift"] for r in training.values()]
    assert drift[0] == 0.0 < drift[1] < drift[2] < 0.05
    assert (out / "accelerator_check.md").read_text().strip() in stdout
    assert (out / "training_precision.png").stat().st_size > 0


def test_export_latency(smoke_runs):
    stdout, out = _finished(smoke_runs, "export_latency")
    result = json.loads((out / "export_latency.json").read_text())
    for model in ("encoder", "limu_gru pipeline"):
        runtimes = result["latency"][model]
        assert set(runtimes) == {"onnxruntime", "jax", "pytorch"}
        for t in runtimes.values():
            assert t["calls"] == 5 and 0 < t["median_ms"] <= t["p90_ms"]
    assert result["sizes_bytes"]["classifier.onnx"] > 0 and (out / "export_latency.png").stat().st_size > 0
    assert "limu_gru pipeline   onnxruntime" in stdout


def test_full_pretraining(smoke_runs):
    stdout, out = _finished(smoke_runs, "full_pretraining")
    results = {r["mode"]: r for r in json.loads((out / "full_pretraining.json").read_text())["results"]}
    assert list(results) == ["step", "dispatch", "resident", "resident_bf16", "torch"]
    for r in results.values():
        assert r["steps_per_epoch"] == 4 and r["samples_per_s"] > 0 and all(map(_finite, r["losses"]))
    full = [r["full_run"] for r in results.values() if "full_run" in r]
    assert len(full) == 1 and full[0]["epochs"] == 3
    assert "(the smoke model, BertAdam)" in stdout and (out / "full_pretraining.png").stat().st_size > 0


def test_streaming_pretraining(smoke_runs):
    stdout, out = _finished(smoke_runs, "streaming_pretraining")
    results = json.loads((out / "streaming_pretraining.json").read_text())
    assert results["windows"] == 2000 and results["build"]["windows"] == 2000
    assert results["streaming"]["train_windows"] == 1600 and results["memory"]["windows"] == 1000
    assert results["streaming_over_memory"] > 0 and "streaming / in memory:" in stdout


def test_input_pipeline(smoke_runs):
    stdout, out = _finished(smoke_runs, "input_pipeline")
    results = json.loads((out / "input_pipeline.json").read_text())
    # recordings (smoke): 120-step windows every 6 steps at 20 Hz from files of 60 s, 300 or more
    per_file = (60 * 20 - 120) // 6 + 1  # 181: 2 files
    assert {name: b["windows"] for name, b in results["build"].items()} == {
        "120x6": 3_000, "20x6": 20_000, "recordings stride 6": 2 * per_file}
    recordings = results["build"]["recordings stride 6"]
    assert recordings["files"] == 2 and recordings["source_rows"] == 2 * 60 * 100 and recordings["stride"] == 6
    assert recordings["windows_per_s"] > 0 and recordings["source_rows_per_s"] > 0 and recordings["csv_mb_per_s"] > 0
    for cores in ("1", "2"):
        rows = results["stream"][cores]
        assert set(rows) == {f"{shape} {cache}" for shape in ("120x6", "20x6") for cache in ("warm", "cold")}
        for r in rows.values():
            assert r["cores"] == int(cores) and r["stream"]["batches"] > 0 and r["gather"]["per_cpu_s"] > 0
            assert r["ratio_per_cpu_s"] == r["stream"]["per_cpu_s"] / r["gather"]["per_cpu_s"]
    projection = results["projection"]
    assert projection["windows"] == 1.43e6 * 3600 and set(projection["hosts_warm"]) == {"8-GPU node", "v5e-256"}
    assert (out / "input_pipeline.md").read_text().strip() in stdout
    assert (out / "input_pipeline.png").stat().st_size > 0


def test_pretrain_throughput(smoke_runs):
    stdout, out = _finished(smoke_runs, "pretrain_throughput")
    results = json.loads((out / "pretrain_throughput.json").read_text())
    assert results["ratios"]["steady"] > 0 and results["jax"]["steps_per_epoch"] == 4
    (batch,) = results["whole_job"]["batches"]
    assert batch["batch_size"] == 16 and batch["epochs"] == [1, 2]
    assert {r["side"] for r in batch["reference"]["runs"] + batch["limubert_jax"]["runs"]} == {
        "reference", "limubert_jax"}
    assert "whole job, batch 16" in stdout and (out / "pretrain_throughput.png").stat().st_size > 0


def test_the_reference_job_inside_the_whole_job(smoke_runs):
    """reference_pretrain.py as pretrain_throughput.py's whole job ran it (tiny model, 100
    windows, batch 16, the last partial batch dropped): its result line, and a best model that
    loads strictly into the PyTorch model written from the reference's behaviour."""
    _finished(smoke_runs, "pretrain_throughput")
    scratch = smoke_runs["pretrain_throughput"][1].parent / "whole-job"
    log = (scratch / "logs" / "b16_reference_e2_r0.log").read_text()
    assert "epoch 2/2: train loss" in log
    result = json.loads(next(line for line in reversed(log.splitlines()) if line.startswith("RESULT_JSON "))[12:])
    assert result["epochs"] == 2 and len(result["epoch_seconds"]) == 2
    assert (result["train_windows"], result["vali_windows"], result["steps_per_epoch"]) == (80, 10, 5)
    assert result["best_epoch"] in (1, 2) and result["best_val_loss"] == result["best_val_loss"]  # not NaN
    assert result["total_seconds"] > 0 and result["peak_rss_mb"] > 0 and result["peak_device_bytes"] is None
    assert result["labels_loaded"] and not result["jax_imported"]  # the reference job never loads JAX
    best = scratch / "b16" / "reference_e2_r0" / "model.pt"
    assert (scratch.parent / result["best_model"]).resolve() == best.resolve() and best.is_file()

    import torch
    from torch_reference import LIMUBertModel4Pretrain

    from limubert_jax.models.encoder import LimuBertConfig

    model = LIMUBertModel4Pretrain(LimuBertConfig(hidden=24, hidden_ff=48, n_layers=2, n_heads=2))
    model.load_state_dict(torch.load(best, weights_only=True), strict=True)


def _finite(x) -> bool:
    return x == x and abs(x) != float("inf")


# ---------------------------------------------------------------------------------------
# The project names the benchmarks use.


def _project_names(tree: ast.Module) -> tuple[dict[str, str], list[tuple[str, str, int]]]:
    """(local name -> module path for every `limubert_jax` module bound in the file, and every
    (module, attribute, line) the file reads: imported names, `alias.attr`, and
    `mock.patch.object(alias, "attr")`)."""
    modules, uses = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "limubert_jax":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if importlib.util.find_spec(node.module) and _is_module(full):
                    modules[alias.asname or alias.name] = full
                else:
                    uses.append((node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "limubert_jax" and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            uses.append((modules[node.value.id], node.attr, node.lineno))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "object"
                and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in modules
                and isinstance(node.args[1], ast.Constant)):
            uses.append((modules[node.args[0].id], node.args[1].value, node.lineno))
    return modules, uses


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmarks_use_public_project_names(script):
    tree = ast.parse((BENCHMARKS / script).read_text())
    _, uses = _project_names(tree)
    for module, attr, line in uses:
        where = f"benchmarks/{script}:{line}: {module}.{attr}"
        assert not attr.startswith("_"), f"{where} is private: give it a public name the tests use"
        assert hasattr(importlib.import_module(module), attr), f"{where} does not exist"


def test_the_name_check_sees_private_and_missing_names():
    tree = ast.parse("from limubert_jax.models import inference\nfrom limubert_jax.runtime.precision import dot\n"
                     "inference._encode(1)\nmock.patch.object(inference, 'nowhere')\n")
    modules, uses = _project_names(tree)
    assert modules == {"inference": "limubert_jax.models.inference"}
    assert sorted(uses) == [("limubert_jax.models.inference", "_encode", 3),
                            ("limubert_jax.models.inference", "nowhere", 4),
                            ("limubert_jax.runtime.precision", "dot", 2)]
