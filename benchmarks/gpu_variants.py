"""Speed variants of the paper's full HHAR-sized pretraining run (3,200 epochs x 7,333 windows,
batch 128, base_v1, BertAdam) against its goal: under 2 minutes on one H100 or H200, i.e. at
least 195,000 windows/s, with the mean loss of the first epochs within 1% of the float32 path.

The one command for a GPU session (the device tool's `run`; nothing to carry or install: the
image's python3 has jax 0.11, flax, optax, numpy and matplotlib, and this script imports the
package from the working tree without tensorflow-datasets, grain, ml_collections or
tensorboardX). Expected to take 4 to 7 minutes on an H200 (not measured yet: each variant is a
fresh process that compiles its program); `--max-seconds` (default 450) keeps it under 8:

    set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_variants.py --out $OUT 2>&1 | tee $OUT/gpu_variants.log

with timeout_s=540. On a CPU, the smoke run (under a minute on 2 cores, nearly all of it
compiling; the tests run two of its variants):

    .venv/bin/python benchmarks/gpu_variants.py --smoke --in-process --out /tmp/gpu-variants-smoke

Every variant trains from the same fresh parameters on the same `synthetic_windows`, as the
job's device-resident mode: one compiled call per epoch (`steps.jit_resident_epoch`: shuffle,
masking and the optimizer steps on device). Per variant: lowering and compiling (timed apart,
ahead of time), one warm-up epoch, then `--epochs` timed epochs. windows/s comes from the
median timed epoch, the full run is projected as compile + warm-up epoch + 3,199 x median
epoch, and "mean loss" is the mean training loss over every step of the warm-up and timed
epochs, compared with the `f32_highest` row (the exact path; same batches and masks, so the
curves differ by arithmetic only).

Variants, in the order they run (`VARIANTS` below; `--variants` picks some, the others' rows
say "not in --variants"):

* f32_highest: float32, every matmul at full float32 (the job's default; the loss reference).
* f32_tf32: float32 at matmul precision `default` (TF32 on NVIDIA GPUs).
* bf16: bfloat16 compute (float32 parameters, optimizer state and softmax/LayerNorm
  statistics), matmuls at `default`. The bf16_* rows below all start from this one.
* bf16_fused_pad32 / bf16_fused_pad24: the encoder's attention replaced by
  `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN's fused flash attention) on a
  GPU, `implementation="xla"` elsewhere; the attention column says which ran, and a GPU row
  whose cuDNN compile failed says why and ran XLA's. cuDNN needs a head size that is a multiple
  of 8; base_v1's is 18, so q, k and v are zero-padded to 32 (or 24) and the padding is cut
  from the output: exact, because zero columns add nothing to q.k and give zero output columns.
* bf16_fused_pad32_b256: the same at batch 256 (not the paper's batch; its loss is not
  comparable, so its loss check reads n/a).
* bf16_flat_adam: BertAdam over all parameter tensors at once (`flat_bert_adam`: the tensors
  as rows of one zero-padded matrix, per-row clipping norms) instead of a few small kernels per
  tensor; the same update up to float32 summation order.
* bf16_cmdbuf_unrolled: XLA flags that record while loops into CUDA graphs (command buffers of
  type WHILE and CONDITIONAL) and unroll them there, so that an epoch's steps can run as one
  graph launch; whether XLA manages that for this loop is what the row measures. (The README
  records command buffers for while loops measuring the same as without; the unrolling is new.)
* bf16_fused_pad32_flat_adam_cmdbuf: the three cheap changes together.
* bf16_no_cmdbuf: command buffers off (the control for the command-buffer rows).
* bf16_no_triton_gemm: XLA's Triton GEMM emitter off (cuBLAS for every matmul).

How a variant plugs in without editing the package: an attention variant is swapped in with
`unittest.mock.patch.object(limubert_jax.models.encoder, "attention", variant)` around the
lowering (the encoder looks `attention(qkv, n_heads, positions=None)` up at trace time;
`positions` [B, M] selects the query rows of the last layer), and every variant gets a freshly
built `jax.jit` (`jit_resident_epoch.__wrapped__`, not its memoized program), lowered and
compiled ahead of time inside that scope, so no program traced for another variant is reused.
The optimizer goes in as `tx`; XLA flags go into `XLA_FLAGS` of a child process.

Each variant runs in its own child process (XLA flags must be set before JAX starts, a
variant that crashes takes only its own row down, and each row's peak device memory is its
own); `--in-process` runs them all in this process instead, skipping the XLA-flag rows (the
smoke command above passes it). `--max-seconds` skips the variants that would not finish within it,
and says so in their rows. Prints the header and one markdown table (also
`gpu_variants.md`), and writes `gpu_variants.json` and `gpu_variants.png` to `--out`.
`--smoke`: 64 windows, batch 16, one timed epoch and a small model that keeps base_v1's head
size 18 (hidden 36, 2 heads, 1 layer), random parameters drawn with NumPy, compiled without
XLA's optimizations.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

import harness
from harness import log

harness.use_checkout()

PAPER_EPOCHS = 3200
GOAL_WINDOWS_PER_S = 195_000  # 7,333 windows x 3,200 epochs in 120 s
GOAL_SECONDS = 120.0
LOSS_TOLERANCE = 0.01  # relative deviation of the mean loss from the reference row
REFERENCE = "f32_highest"
# Packages the GPU image lacks; nothing this script imports may need them.
UNAVAILABLE_ON_GPU_IMAGE = ("tensorflow_datasets", "grain", "ml_collections", "tensorboardX")
# Command buffers (CUDA graphs) for while loops and conditionals, the loops unrolled into them.
CMDBUF_WHILE_UNROLLED = ("--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL",
                         "--xla_gpu_command_buffer_unroll_loops=true")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    what: str  # one line for the notes under the table
    compute: str = "float32"  # or "bfloat16"
    matmul_precision: str = "highest"
    head_pad: int | None = None  # None: the encoder's own attention; else fused, heads padded to this
    batch_factor: int = 1  # x --batch-size (2: batch 256, not the paper's)
    flat_adam: bool = False
    xla_flags: tuple[str, ...] = ()


_BF16 = dict(compute="bfloat16", matmul_precision="default")
VARIANTS = (
    Variant(REFERENCE, "float32, matmuls at full float32 (the job's default; the loss reference)"),
    Variant("f32_tf32", "float32, matmul precision default (TF32 on NVIDIA GPUs)", matmul_precision="default"),
    Variant("bf16", "bfloat16 compute, float32 parameters and statistics, matmul precision default", **_BF16),
    Variant("bf16_fused_pad32", "bf16 + jax.nn.dot_product_attention (cuDNN on GPU), head size 18 zero-padded to 32",
            head_pad=32, **_BF16),
    Variant("bf16_fused_pad24", "bf16 + fused attention, head size zero-padded to 24", head_pad=24, **_BF16),
    Variant("bf16_fused_pad32_b256", "bf16_fused_pad32 at twice the batch (256: not the paper's batch)",
            head_pad=32, batch_factor=2, **_BF16),
    Variant("bf16_flat_adam", "bf16 + BertAdam on all tensors as one padded matrix (fewer optimizer kernels)",
            flat_adam=True, **_BF16),
    Variant("bf16_cmdbuf_unrolled", "bf16 + XLA flags " + " ".join(CMDBUF_WHILE_UNROLLED),
            xla_flags=CMDBUF_WHILE_UNROLLED, **_BF16),
    Variant("bf16_fused_pad32_flat_adam_cmdbuf", "bf16_fused_pad32 + flat BertAdam + the command-buffer flags",
            head_pad=32, flat_adam=True, xla_flags=CMDBUF_WHILE_UNROLLED, **_BF16),
    Variant("bf16_no_cmdbuf", "bf16 + XLA flag --xla_gpu_enable_command_buffer= (command buffers off: the control)",
            xla_flags=("--xla_gpu_enable_command_buffer=",), **_BF16),
    Variant("bf16_no_triton_gemm", "bf16 + XLA flag --xla_gpu_enable_triton_gemm=false (cuBLAS for every matmul)",
            xla_flags=("--xla_gpu_enable_triton_gemm=false",), **_BF16),
)
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


# ---------------------------------------------------------------------------------------
# The variants' pieces (traced inside the train step).


def fused_attention(head_size: int, implementation: str | None):
    """An `encoder.attention(qkv, n_heads, positions=None)` replacement computed by
    `jax.nn.dot_product_attention(..., implementation=implementation)` on q, k and v
    zero-padded from the model's head size to `head_size` (the cuDNN kernel takes multiples of
    8 only). qkv [B, S, 3H] holds q pre-scaled, so the scale is 1; with positions [B, M] only
    those query rows are computed: -> [B, M, H], else [B, S, H]."""
    import jax
    import jax.numpy as jnp

    def attention(qkv, n_heads, positions=None):
        batch, seq, width = qkv.shape
        model_head = width // (3 * n_heads)
        if head_size < model_head:
            raise ValueError(f"fused_attention: head size {head_size} < the model's {model_head}")
        heads = qkv.reshape(batch, seq, 3, n_heads, model_head)
        if head_size > model_head:
            heads = jnp.pad(heads, [(0, 0)] * 4 + [(0, head_size - model_head)])
        q, k, v = heads[:, :, 0], heads[:, :, 1], heads[:, :, 2]  # [B, S, NH, D] each
        if positions is not None:
            q = jnp.take_along_axis(q, positions[:, :, None, None], axis=1)
        out = jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation=implementation)
        return out[..., :model_head].reshape(batch, out.shape[1], n_heads * model_head)

    return attention


class FlatBertAdamState(NamedTuple):
    count: object  # int32 scalar: updates so far (the schedule's step)
    mu: object  # [tensors, widest] first moments, a tensor per row, zero-padded
    nu: object  # the same, second moments


def flat_bert_adam(params, *, learning_rate: float, total_steps: int, warmup: float, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
    """The package's pretraining BertAdam (`optim.pretrain_optimizer("bert_adam", ...)`: per-tensor
    clipping, moments without bias correction, decay of every tensor, the warmup-linear
    schedule, the head `fc` frozen) computed on every tensor at once: the tensors of `params`'s
    structure are the zero-padded rows of one matrix, so clipping is one row-wise reduction and
    the rest one elementwise pass, instead of a few kernels per tensor. Same values up to the
    order of float32 sums."""
    import jax
    import jax.numpy as jnp
    import optax

    from limubert_jax.pretraining import optim

    leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = [leaf.shape for leaf in leaves]
    sizes = [int(np.prod(shape)) for shape in shapes]
    widest = max(sizes)
    frozen = np.asarray(jax.tree_util.tree_leaves(optim.pretrain_frozen_mask(params)), bool)
    trainable = (~frozen).astype(np.float32)[:, None]  # frozen rows get zero updates
    schedule = optim.warmup_linear_schedule(learning_rate, warmup=warmup, total_steps=total_steps)

    def rows(tree):
        return jnp.stack([jnp.pad(jnp.ravel(x).astype(jnp.float32), (0, widest - x.size))
                          for x in jax.tree_util.tree_leaves(tree)])

    def tree_of(matrix):
        return treedef.unflatten([matrix[i, :size].reshape(shape)
                                  for i, (size, shape) in enumerate(zip(sizes, shapes))])

    def init(params):
        # Two arrays, not one twice: the train step donates the state, buffer by buffer.
        return FlatBertAdamState(jnp.zeros((), jnp.int32), jnp.zeros((len(leaves), widest), jnp.float32),
                                 jnp.zeros((len(leaves), widest), jnp.float32))

    def update(updates, state, params=None):
        g = rows(updates)
        norms = jnp.sqrt(jnp.sum(jnp.square(g), axis=1, keepdims=True))
        g = g * jnp.minimum(1.0, max_grad_norm / (norms + optim.CLIP_NORM_EPS))
        mu = b1 * state.mu + (1.0 - b1) * g
        nu = b2 * state.nu + (1.0 - b2) * (g * g)
        step = mu / (jnp.sqrt(nu) + eps) + weight_decay * rows(params)
        step = -schedule(state.count) * step * trainable
        return tree_of(step), FlatBertAdamState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------
# One variant, measured in this process.


def model_config(args):
    from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig

    # The smoke model keeps base_v1's head size (18), the one the fused rows pad.
    return LimuBertConfig(hidden=36, hidden_ff=72, n_layers=1, n_heads=2) if args.smoke else MODEL_CONFIGS["base_v1"]


def _framework() -> dict:
    import importlib.metadata

    import jax

    device = jax.devices()[0]
    try:
        jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        jaxlib_version = "?"
    return {"device_kind": device.device_kind, "platform": device.platform, "devices": len(jax.devices()),
            "jax": jax.__version__, "jaxlib": jaxlib_version, "python": platform.python_version()}


def _program_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries of a compiled program, less donated (aliased) bytes,
    by XLA's own memory analysis; None where the backend does not give it."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - optional statistics; any backend may lack them
        return None


def measure_variant(variant: Variant, args) -> dict:
    """Compiles and runs `variant` in this process; returns its row's measurements."""
    from unittest import mock

    import jax
    import jax.numpy as jnp

    from limubert_jax.data.synthetic import synthetic_windows
    from limubert_jax.models import encoder
    from limubert_jax.pretraining import optim, steps
    from limubert_jax.runtime import sharding

    if args.smoke:  # a check that everything runs, not a timing: compile in half the time
        jax.config.update("jax_disable_most_optimizations", True)
    cfg = model_config(args)
    batch = args.batch_size * variant.batch_factor
    windows = synthetic_windows(args.windows, seed=0).astype(np.float32)
    steps_per_epoch = len(windows) // batch
    if steps_per_epoch < 1:
        raise ValueError(f"{args.windows} windows make no batch of {batch}")
    mesh = sharding.make_mesh()
    rep = sharding.replicated(mesh)
    model = encoder.LimuBertModel4Pretrain(cfg)
    if args.smoke:  # any parameters of the right shapes do for a smoke check; the init program compiles for ~2 s
        draw = np.random.default_rng(0)
        params = jax.tree.map(lambda s: (0.2 * draw.standard_normal(s.shape)).astype(s.dtype),
                              jax.eval_shape(model.init_params, jax.random.key(0)))
    else:
        params = model.init_params(jax.random.key(0))
    schedule = dict(learning_rate=1e-3, total_steps=steps_per_epoch * PAPER_EPOCHS, warmup=0.1)
    tx = flat_bert_adam(params, **schedule) if variant.flat_adam else optim.pretrain_optimizer("bert_adam", **schedule)
    state = jax.device_put(steps.TrainState.create(params, tx), rep)
    resident = jax.device_put(windows, rep)
    rng = jax.random.key(1)
    # A fresh jax.jit per variant: the memoized one could hand back a program traced with
    # another variant's attention. encoder_chunk=0: the whole batch at once, as the GPU's
    # default (`encoder.default_chunk()`), also in a CPU smoke run.
    build = getattr(steps.jit_resident_epoch, "__wrapped__", steps.jit_resident_epoch)
    epoch_fn = build(mesh, steps=steps_per_epoch, batch_size=batch, model_config=cfg, mask_config=steps.MaskConfig(),
                     tx=tx, matmul_precision=variant.matmul_precision, encoder_chunk=0,
                     compute_dtype=jnp.bfloat16 if variant.compute == "bfloat16" else jnp.float32)

    def compile_with(attention_fn):
        scope = (mock.patch.object(encoder, "attention", attention_fn) if attention_fn is not None
                 else contextlib.nullcontext())
        with scope:  # the attention is looked up while tracing, i.e. inside lower()
            return epoch_fn.lower(state, resident, jax.random.key(0), rng).compile()

    t0 = time.perf_counter()
    attention_note = "encoder.attention"
    if variant.head_pad is None:
        compiled = compile_with(None)
    else:
        implementation = "cudnn" if jax.default_backend() == "gpu" else "xla"
        try:
            compiled = compile_with(fused_attention(variant.head_pad, implementation))
        except Exception as e:  # noqa: BLE001 - cuDNN refuses shapes/versions in many ways; the row says which
            if implementation == "xla":
                raise
            log(f"{variant.name}: cuDNN attention failed ({type(e).__name__}: {e}); running XLA's")
            implementation = f"xla (cudnn failed: {type(e).__name__}: {str(e).splitlines()[0][:120]})"
            compiled = compile_with(fused_attention(variant.head_pad, "xla"))
        attention_note = f"dot_product_attention {implementation}, head {variant.head_pad}"
    compile_s = time.perf_counter() - t0

    epoch_s, epoch_losses = [], []
    for epoch in range(1 + args.epochs):  # epoch 0: the warm-up, untimed in the median
        epoch_key = jax.random.key(epoch)
        t0 = time.perf_counter()
        state, metrics = compiled(state, resident, epoch_key, rng)
        losses = np.asarray(jax.device_get(metrics["loss"]), np.float64)  # waits for the epoch
        epoch_s.append(time.perf_counter() - t0)
        epoch_losses.append(losses.tolist())
    median = float(np.median(epoch_s[1:]))
    result = {
        "variant": variant.name, "status": "ok", "batch_size": batch, "steps_per_epoch": steps_per_epoch,
        "compute": variant.compute, "matmul_precision": variant.matmul_precision, "attention": attention_note,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": compile_s, "first_epoch_s": epoch_s[0],
        "epoch_s": epoch_s[1:], "median_epoch_s": median,
        "windows_per_s": steps_per_epoch * batch / median, "ms_per_step": 1e3 * median / steps_per_epoch,
        "projected_full_s": compile_s + epoch_s[0] + (PAPER_EPOCHS - 1) * median,
        "epoch_losses": epoch_losses, "finite": bool(np.all(np.isfinite(np.concatenate(epoch_losses)))),
        "program_bytes": _program_bytes(compiled), **harness.peak_memory(), **_framework(),
    }
    log(f"{variant.name}: {result['windows_per_s']:.0f} windows/s, {result['ms_per_step']:.3f} ms/step, "
        f"compile {compile_s:.1f} s, full run ~{result['projected_full_s'] / 60:.2f} min ({attention_note})")
    return result


# ---------------------------------------------------------------------------------------
# The driver: each variant in a child process (or in this one), under a time budget.


def _skipped(variant: Variant, status: str, reason: str) -> dict:
    return {"variant": variant.name, "status": status, "reason": reason,
            "batch_size": None, "compute": variant.compute, "matmul_precision": variant.matmul_precision}


def _run_child(variant: Variant, argv: list[str], timeout: float) -> dict:
    """`measure_variant` in a child process with the variant's XLA flags; its stderr is relayed
    here line by line (the device run's log shows progress), its last lines kept for a failure."""
    with tempfile.TemporaryDirectory(prefix="gpu-variants-") as tmp:
        result_path = Path(tmp) / "result.json"
        env = dict(os.environ)
        env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), *variant.xla_flags]))
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", variant.name,
               "--child-json", str(result_path)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        tail = collections.deque(maxlen=20)

        def relay():
            for line in proc.stderr:
                sys.stderr.write(f"  [{variant.name}] {line}")
                tail.append(line.rstrip())

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            return _skipped(variant, "failed", f"stopped after {timeout:.0f} s (--max-seconds)")
        reader.join(5)
        if proc.returncode == 0 and result_path.is_file():
            return json.loads(result_path.read_text())
        last = next((line for line in reversed(tail) if line.strip()), "")
        return _skipped(variant, "failed", f"exit {proc.returncode}: {last[-300:]}")


def run_variants(args, argv: list[str]) -> list[dict]:
    chosen = {n.strip() for n in args.variants.split(",") if n.strip()}
    started = time.perf_counter()
    results, longest = [], 0.0
    for variant in VARIANTS:  # in VARIANTS' order, the more important first (the budget may cut the rest)
        name = variant.name
        if name not in chosen:
            results.append(_skipped(variant, "skipped", "not in --variants"))
            continue
        used = time.perf_counter() - started
        left = args.max_seconds - used
        if left < longest or left <= 0:  # would likely not finish: say so instead of starting it
            results.append(_skipped(variant, "skipped", f"--max-seconds {args.max_seconds:.0f}: {used:.0f} s used, "
                                    f"the longest variant so far took {longest:.0f} s"))
            log(f"{name}: skipped, {results[-1]['reason']}")
            continue
        t0 = time.perf_counter()
        if args.in_process:
            if variant.xla_flags:
                results.append(_skipped(variant, "skipped", "XLA flags must be set before JAX starts: runs in a "
                                        "child process (without --in-process)"))
                continue
            try:
                results.append(measure_variant(variant, args))
            except Exception as e:  # noqa: BLE001 - one variant's failure is its row, not the run's end
                log(f"{name}: failed: {type(e).__name__}: {e}")
                results.append(_skipped(variant, "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
        else:
            flags = f", XLA_FLAGS += {' '.join(variant.xla_flags)}" if variant.xla_flags else ""
            log(f"{name}: starting (child process{flags})")
            results.append(_run_child(variant, argv, timeout=left))
        results[-1]["wall_s"] = time.perf_counter() - t0
        longest = max(longest, results[-1]["wall_s"])
        _write(args, results)  # after every variant: a run cut short keeps what it measured
    return results


def _mean_loss(result: dict, epochs: int) -> float:
    return float(np.mean(np.concatenate([np.asarray(e, np.float64) for e in result["epoch_losses"][:epochs]])))


def compare_losses(results: list[dict]) -> None:
    """Adds to every measured row its mean loss and that mean's relative deviation from the
    reference row's over the same epochs; `loss_ok` is None where no verdict applies (no
    reference row, or another batch size: other batches, another curve)."""
    reference = next((r for r in results if r["variant"] == REFERENCE and r["status"] == "ok"), None)
    for r in results:
        if r["status"] != "ok":
            continue
        epochs = len(r["epoch_losses"]) if reference is None else min(len(r["epoch_losses"]),
                                                                        len(reference["epoch_losses"]))
        r["loss_epochs"] = epochs
        r["mean_loss"] = _mean_loss(r, epochs)
        r["loss_deviation"] = r["loss_ok"] = None
        r["meets_goal"] = r["windows_per_s"] >= GOAL_WINDOWS_PER_S and r["projected_full_s"] <= GOAL_SECONDS
        if reference is None:
            continue
        ref_mean = _mean_loss(reference, epochs)
        r["loss_deviation"] = abs(r["mean_loss"] - ref_mean) / abs(ref_mean)
        if r["batch_size"] == reference["batch_size"]:
            r["loss_ok"] = bool(r["finite"] and r["loss_deviation"] <= LOSS_TOLERANCE)


def _mb(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def header_lines(args, results: list[dict], argv: list[str]) -> list[str]:
    info = next((r for r in results if r["status"] == "ok"), None)
    device = (f"{info['device_kind']} ({info['platform']}) x{info['devices']}; jax {info['jax']}, "
              f"jaxlib {info['jaxlib']}; Python {info['python']}" if info
              else f"no variant ran; Python {platform.python_version()}")
    cfg = "smoke model (hidden 36, 2 heads of 18, 1 layer)" if args.smoke else "base_v1"
    return [f"gpu_variants: {args.windows} windows x {PAPER_EPOCHS} epochs, batch {args.batch_size}, {cfg}, BertAdam; "
            f"{args.epochs} timed epoch(s) after a warm-up epoch per variant",
            f"device: {device}",
            f"command: {shlex.join([Path(sys.executable).name, 'benchmarks/gpu_variants.py', *argv])}",
            f"goal: >= {GOAL_WINDOWS_PER_S:,} windows/s and the full run projected <= {GOAL_SECONDS / 60:.0f} min; "
            f"loss: mean over the first epochs within {LOSS_TOLERANCE:.0%} of {REFERENCE}"]


def table(results: list[dict]) -> str:
    lines = ["| variant | batch | compute, matmul | attention | windows/s | ms/step | compile s | full run (projected) "
             "| goal | peak device MB | program MB | mean loss | vs f32_highest | loss <= 1% | note |",
             "|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | - | {r['compute']}, {r['matmul_precision']} | - | - | - | - | - | - | - "
                         f"| - | - | - | - | {r['status']}: {r['reason']} |")
            continue
        deviation = "-" if r["loss_deviation"] is None else f"{100 * r['loss_deviation']:.3f}%"
        if r["loss_ok"] is None:
            verdict = "n/a" + (f" (batch {r['batch_size']})" if r["loss_deviation"] is not None else "")
        else:
            verdict = "pass" if r["loss_ok"] else "FAIL"
        notes = [f"XLA_FLAGS {r['xla_flags']}"] if r.get("xla_flags") else []
        if not r["finite"]:
            notes.append("non-finite loss")
        lines.append(
            f"| {r['variant']} | {r['batch_size']} | {r['compute']}, {r['matmul_precision']} | {r['attention']} "
            f"| {r['windows_per_s']:,.0f} | {r['ms_per_step']:.3f} | {r['compile_s']:.1f} "
            f"| {r['projected_full_s'] / 60:.2f} min | {'yes' if r['meets_goal'] else 'no'} "
            f"| {_mb(r['peak_device_bytes'])} | {_mb(r['program_bytes'])} | {r['mean_loss']:.5f} | {deviation} "
            f"| {verdict} | {'; '.join(notes)} |")
    return "\n".join(lines)


def notes_lines(results: list[dict]) -> list[str]:
    lines = ["windows/s: the median timed epoch; full run: compile + warm-up epoch + 3,199 x median epoch; "
             "peak device MB: the variant's process peak (memory_stats; '-' on XLA:CPU; with --in-process, the "
             "peak over this and the variants before it); program MB: XLA's memory "
             "analysis of the compiled epoch (arguments + outputs + temporaries - donated)."]
    lines += [f"- {r['variant']}: {VARIANTS_BY_NAME[r['variant']].what}" for r in results]
    return lines


def _plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in results if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 0.4 * max(3, len(measured)) + 1.2))
    colors = ["tab:green" if r["meets_goal"] else ("tab:red" if r["loss_ok"] is False else "tab:blue")
              for r in measured]
    ax.barh([r["variant"] for r in measured], [r["projected_full_s"] / 60 for r in measured], color=colors)
    ax.axvline(GOAL_SECONDS / 60, color="black", linestyle="--", linewidth=1, label="goal: 2 min")
    ax.set_xlabel(f"minutes for {PAPER_EPOCHS} epochs (projected); green: meets the goal, red: loss off by > 1%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(args, results: list[dict], header: list[str] | None = None) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.node(), "python": platform.python_version(), "load_avg_1min": os.getloadavg()[0],
            "args": {k: str(v) for k, v in vars(args).items()}, "header": header}
    (args.out / "gpu_variants.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_variants.json, .md and .png")
    parser.add_argument("--variants", default=",".join(VARIANTS_BY_NAME),
                        help="comma-separated, of (and always run in this order) " + ", ".join(VARIANTS_BY_NAME))
    parser.add_argument("--windows", type=int, default=None, help="training windows (default HHAR's 7,333)")
    parser.add_argument("--batch-size", type=int, default=None, help="the paper's batch (default 128)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="timed epochs per variant after the warm-up (default 3)")
    parser.add_argument("--max-seconds", type=float, default=450.0,
                        help="time budget: variants that would not finish within it are skipped, and say so")
    parser.add_argument("--in-process", action="store_true",
                        help="run every variant in this process (no child processes; XLA-flag variants skipped)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes for a CPU check: 64 windows, batch 16, 1 timed epoch, a small model")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run one variant, write --child-json
    parser.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = (64, 16, 1) if args.smoke else (7333, 128, 3)
    for name, default in zip(("windows", "batch_size", "epochs"), sizes):
        if getattr(args, name) is None:
            setattr(args, name, default)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    unknown = [n for n in args.variants.split(",") if n.strip() and n.strip() not in VARIANTS_BY_NAME]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; variants: {', '.join(VARIANTS_BY_NAME)}")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        result = measure_variant(VARIANTS_BY_NAME[args.child], args)
        args.child_json.write_text(json.dumps(result))
        return 0
    results = run_variants(args, argv)
    compare_losses(results)
    header = header_lines(args, results, argv)
    text = "\n".join([*header, "", table(results), "", *notes_lines(results)])
    _write(args, results, header)
    (args.out / "gpu_variants.md").write_text(text + "\n")
    print(text, flush=True)
    try:  # after the table: a plotting problem must not cost the one GPU run its numbers
        _plot(results, args.out / "gpu_variants.png", header[1])
    except Exception as e:  # noqa: BLE001
        log(f"gpu_variants.png not written: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
