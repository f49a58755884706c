"""End-to-end smoke test of the README's run command, and the README/CI commands staying true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from limubert_jax import demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path, capsys):
    pytest.importorskip("torch")
    assert demo.main(["--workdir", str(tmp_path), "--num_windows", "16"]) == 0
    out = capsys.readouterr().out
    assert "max abs difference" in out
    diff = float(out.rsplit("max abs difference", 1)[1].split()[0])
    assert diff < 1e-4
    assert np.load(tmp_path / "embeddings.npy").shape == (16, 120, 72)
    for name in ("checkpoint/model_config.json", "limu_bert.pt", "limu_bert.json", "windows.npy"):
        assert (tmp_path / name).exists(), name


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    commands = [line for line in lines[:8] if line.startswith("python3 -m venv")]
    assert len(commands) == 2, commands
    run_command, test_command = commands
    assert "python -m limubert_jax." in run_command
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
