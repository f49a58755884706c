"""The original LIMU-BERT pretraining job (`pretrain.py` of the public release), as one process.

    python benchmarks/reference_pretrain.py --data DIR/data_20_120.npy --epochs 6 --batch-size 128 --save OUT

Written from docs/reference.md (§1, §4-§6), so that the whole-job benchmark
(`benchmarks/pretrain_throughput.py`) can time the reference the way a user runs it, from
launch to exit:

1. load the raw windows (N, S, F) from the .npy (and `label_<version>.npy` beside it, which
   the reference loads with them although pretraining does not use it);
2. seed everything with the reference seed, then split the windows 80/10/10 with NumPy's
   legacy global generator (`np.random.seed(seed)`, `np.random.shuffle` of `arange(N)`),
   the split `limubert_jax.data.splits.pretrain_split` reproduces;
3. a `Dataset` that normalizes and span-masks each window with NumPy in `__getitem__`
   (`reference_pipeline.PretrainDataset`) and a shuffling `DataLoader` (num_workers 0);
4. `LIMUBertModel4Pretrain` (`tests/torch_reference.py`, base_v1), `torch.optim.Adam(lr 1e-3)`,
   mean squared error on the masked positions, `loss.item()` every step;
5. after every epoch the masked MSE on the validation split, through the same masking
   `Dataset` (its masks are drawn anew each epoch, as the reference's are), and the model's
   `state_dict` saved with `torch.save` whenever that loss improves (the best model).

Prints one line per epoch and at the end one `RESULT_JSON {...}` line: epochs, seconds per
epoch, losses, seconds inside the script, peak resident memory (and peak CUDA memory on a
GPU). JAX is never imported: the process costs what the reference's does.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: "seconds inside the script" counts them

import argparse  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402

REFERENCE_SEED = 3431  # docs/reference.md §5
BEST_MODEL = "model.pt"


@dataclass(frozen=True)
class ModelConfig:
    """The fields `torch_reference` reads (the reference's `limu_bert.json` names)."""

    feature_num: int = 6
    hidden: int = 72
    hidden_ff: int = 144
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 120
    emb_norm: bool = True


MODELS = {
    "base_v1": ModelConfig(),  # docs/reference.md: H 72, FF 144, NH 4, R 4, S 120, F 6
    # For quick checks only: the width of the tests' config (tests/configs/test.py).
    "tiny": ModelConfig(hidden=24, hidden_ff=48, n_layers=2, n_heads=2),
}


def reference_split(num_windows: int, seed: int, train_rate: float, vali_rate: float):
    """docs/reference.md §5 with the global generator, as the reference draws it (it also leaves the
    generator where the reference leaves it for the masking draws that follow)."""
    import numpy as np

    n_train, n_vali = int(num_windows * train_rate), int(num_windows * vali_rate)
    np.random.seed(seed)
    order = np.arange(num_windows)
    np.random.shuffle(order)
    return order[:n_train], order[n_train:n_train + n_vali], order[n_train + n_vali:]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="raw windows (N, S, F) .npy, e.g. DIR/data_20_120.npy")
    parser.add_argument("--labels", default=None,
                        help="labels .npy loaded with the data, as the reference does (default: label_<version>.npy "
                             "beside --data when present; 'none' skips it)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=0, help="validation batch (0: --batch-size)")
    parser.add_argument("--save", required=True, help=f"folder for the best model ({BEST_MODEL})")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=REFERENCE_SEED)
    parser.add_argument("--train-rate", type=float, default=0.8)
    parser.add_argument("--vali-rate", type=float, default=0.1)
    parser.add_argument("--model", choices=sorted(MODELS), default="base_v1",
                        help="base_v1 (the reference's); tiny is for quick checks only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, as the reference")
    parser.add_argument("--drop-last", action="store_true",
                        help="drop each epoch's last partial batch (PyTorch's default keeps it); "
                             "limubert_jax drops it, so the benchmark passes this for equal work")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.batch_size < 1 or args.eval_batch_size < 0:
        parser.error("--batch-size must be >= 1 and --eval-batch-size >= 0")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if not (0 < args.train_rate < 1 and 0 < args.vali_rate < 1 and args.train_rate + args.vali_rate <= 1):
        parser.error("--train-rate and --vali-rate must be in (0, 1) with a sum <= 1")
    if not Path(args.data).is_file():
        parser.error(f"--data: no file {args.data}")
    return args


def _labels_path(args) -> Path | None:
    if args.labels is not None:
        return None if args.labels.lower() == "none" else Path(args.labels)
    data = Path(args.data)
    candidate = data.with_name("label" + data.name[len("data"):]) if data.name.startswith("data") else None
    return candidate if candidate is not None and candidate.is_file() else None


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from reference_pipeline import PretrainDataset, reference_training, train_step

    imported = time.perf_counter() - _STARTED

    cfg = MODELS[args.model]
    data = np.load(args.data).astype(np.float32)
    labels_path = _labels_path(args)
    labels = np.load(labels_path) if labels_path is not None else None
    if data.ndim != 3 or data.shape[1] != cfg.seq_len or data.shape[2] < cfg.feature_num:
        raise SystemExit(f"--data: expected windows (N, {cfg.seq_len}, >= {cfg.feature_num}), got {data.shape}")
    if labels is not None and len(labels) != len(data):
        raise SystemExit(f"--labels: {len(labels)} rows for {len(data)} windows")

    # The reference seeds every generator, then draws the split from NumPy's global one.
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    train_idx, vali_idx, _ = reference_split(len(data), args.seed, args.train_rate, args.vali_rate)
    if len(vali_idx) < 1 or len(train_idx) < (args.batch_size if args.drop_last else 1):
        raise SystemExit(f"{len(data)} windows are too few: {len(train_idx)} train / {len(vali_idx)} validation "
                         f"windows at batch {args.batch_size}")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    model, optimizer, criterion, train_loader = reference_training(
        cfg, data[train_idx], batch_size=args.batch_size, lr=args.lr, device=device, drop_last=args.drop_last)
    vali_loader = torch.utils.data.DataLoader(PretrainDataset(data[vali_idx], cfg.feature_num), shuffle=False,
                                              batch_size=args.eval_batch_size or args.batch_size, num_workers=0)
    save_dir = Path(args.save)
    save_dir.mkdir(parents=True, exist_ok=True)
    best_path = save_dir / BEST_MODEL
    print(f"reference pretraining: {len(data)} windows ({len(train_idx)} train / {len(vali_idx)} validation), "
          f"{args.model}, batch {args.batch_size}, {args.epochs} epochs, torch {torch.__version__} on {device}"
          f" ({torch.get_num_threads()} threads)", flush=True)

    epoch_seconds, train_losses, val_losses = [], [], []
    best_val, best_epoch = float("inf"), 0
    loop_started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = 0.0
        for batch in train_loader:
            loss_sum += train_step(model, optimizer, criterion, batch, device).item()
        train_loss = loss_sum / len(train_loader)
        trained = time.perf_counter() - started

        model.eval()
        squared, count = 0.0, 0
        with torch.no_grad():
            for masked, positions, targets in vali_loader:
                errors = criterion(model(masked.to(device), positions.to(device)), targets.to(device))
                squared += float(errors.sum().item())
                count += errors.numel()
        val_loss = squared / count
        saved = val_loss < best_val
        if saved:
            best_val, best_epoch = val_loss, epoch
            torch.save(model.state_dict(), best_path)
        epoch_seconds.append(time.perf_counter() - started)
        train_losses.append(train_loss)
        val_losses.append(val_loss)
        rate = epoch / (time.perf_counter() - loop_started)
        print(f"epoch {epoch}/{args.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
              f"{epoch_seconds[-1]:.2f} s (train {trained:.2f} s), {rate * 60:.1f} epochs/min, "
              f"ETA {(args.epochs - epoch) / rate:.0f} s{', saved' if saved else ''}", flush=True)

    result = {
        "epochs": args.epochs, "batch_size": args.batch_size, "model": args.model, "windows": len(data),
        "train_windows": len(train_idx), "vali_windows": len(vali_idx), "steps_per_epoch": len(train_loader),
        "drop_last": args.drop_last, "epoch_seconds": epoch_seconds, "train_losses": train_losses,
        "val_losses": val_losses, "best_epoch": best_epoch, "best_val_loss": best_val, "best_model": str(best_path),
        "import_seconds": imported, "total_seconds": time.perf_counter() - _STARTED,
        "peak_rss_mb": harness.peak_rss_mb(),
        "peak_device_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "labels_loaded": labels is not None, "config": asdict(cfg), "jax_imported": "jax" in sys.modules,
    }
    harness.emit_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
