"""The reference's per-window NumPy input pipeline (docs/reference.md §1 and §4), for the PyTorch side
of the benchmarks.

The original code normalizes and masks every window on the host, one window at a time, inside
a `torch.utils.data.Dataset` (`__getitem__` runs the pipeline), with NumPy's legacy global
generator; the `DataLoader` collates the results. This module writes that pipeline from the
docs/reference.md, so that the PyTorch side pays the same host-side cost the reference training loop does.
"""

from __future__ import annotations

import numpy as np
import torch

import harness

GRAVITY = 9.8  # docs/reference.md §1: accelerometer columns 0..2 are divided by this


def normalize_window(window: np.ndarray, feature_num: int = 6) -> np.ndarray:
    """docs/reference.md §1 for one window [S, F_raw] -> [S, feature_num] (acc in g; unit-norm magnetometer
    times gamma = 1.0 when feature_num == 9)."""
    x = np.array(window[:, :feature_num], dtype=np.float32, copy=True)
    if feature_num >= 6:
        x[:, :3] = x[:, :3] / GRAVITY
    if feature_num == 9:
        mag = x[:, 6:9]
        x[:, 6:9] = mag / (np.linalg.norm(mag, axis=1, keepdims=True) + 1e-5) * 1.0
    return x


def span_mask(seq_len: int, max_gram: int = 10, p: float = 0.2, goal: int = 18) -> list[int]:
    """docs/reference.md §4 steps 2-4: the reference's rejection loop, with NumPy's legacy global generator.

    Returns `goal` distinct positions in Python set order; the last position is never masked.
    """
    ngrams = np.arange(1, max_gram + 1, dtype=np.int64)
    pvals = p * np.power(1.0 - p, np.arange(max_gram))
    pvals /= pvals.sum(keepdims=True)
    chosen: set[int] = set()
    while len(chosen) < goal:
        n = int(np.random.choice(ngrams, p=pvals))
        n = min(n, goal - len(chosen))
        anchor = int(np.random.randint(seq_len))
        if anchor in chosen:
            continue
        for i in range(anchor, min(anchor + n, seq_len - 1)):
            chosen.add(i)
    return list(chosen)


class Mask:
    """docs/reference.md §4 for one normalized window [S, F] -> (masked window, positions [M], targets [M, F])."""

    def __init__(self, mask_ratio: float = 0.15, max_gram: int = 10, p: float = 0.2,
                 mask_prob: float = 0.8, replace_prob: float = 0.0):
        self.mask_ratio, self.max_gram, self.p = mask_ratio, max_gram, p
        self.mask_prob, self.replace_prob = mask_prob, replace_prob

    def __call__(self, window: np.ndarray):
        seq_len, feat = window.shape
        goal = max(1, round(seq_len * self.mask_ratio))
        positions = span_mask(seq_len, self.max_gram, self.p, goal)
        masked = window.copy()
        if np.random.rand() < self.mask_prob:
            masked[positions, :] = np.zeros((len(positions), feat))
        elif np.random.rand() < self.replace_prob:
            masked[positions, :] = np.random.random((len(positions), feat))
        return masked, np.array(positions), np.array(window[positions, :])


class PretrainDataset(torch.utils.data.Dataset):
    """The reference's pretraining Dataset: raw windows in, (masked, positions, targets) out,
    normalized and masked per window in `__getitem__`."""

    def __init__(self, raw: np.ndarray, feature_num: int = 6, mask: Mask | None = None):
        self.raw = raw
        self.feature_num = feature_num
        self.mask = mask or Mask()

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int):
        masked, positions, targets = self.mask(normalize_window(self.raw[index], self.feature_num))
        return (torch.from_numpy(masked).float(), torch.from_numpy(positions).long(),
                torch.from_numpy(targets).float())


def train_step(model, optimizer, criterion, batch, device="cpu") -> torch.Tensor:
    """One optimizer step of the reference's pretraining loop on a `PretrainDataset` batch
    (masked, positions, targets): the mean masked squared error, backward, the optimizer's
    step. Returns the loss tensor, not synchronized (the caller decides when to read it)."""
    masked, positions, targets = (t.to(device) for t in batch)
    optimizer.zero_grad()
    loss = criterion(model(masked, positions), targets).mean()
    loss.backward()
    optimizer.step()
    return loss


def reference_training(cfg, windows: np.ndarray, *, batch_size: int, lr: float = 1e-3, device="cpu",
                       drop_last: bool = True, num_workers: int = 0):
    """The reference's pretraining set-up on raw `windows`: the oracle's `LIMUBertModel4Pretrain`
    (`cfg`: any object with its fields) on `device`, `torch.optim.Adam(lr)`, the squared error
    per masked value (`train_step` takes its mean), and a shuffling `DataLoader` over a
    `PretrainDataset`. Returns (model, optimizer, criterion, loader)."""
    model = harness.torch_oracle().LIMUBertModel4Pretrain(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = torch.nn.MSELoss(reduction="none")
    loader = torch.utils.data.DataLoader(PretrainDataset(windows, cfg.feature_num), batch_size=batch_size,
                                         shuffle=True, drop_last=drop_last, num_workers=num_workers)
    return model, optimizer, criterion, loader
