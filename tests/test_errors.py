"""Bad input exits non-zero with one line naming the file, key or shape, and leaves no
partial output behind (issue 2, point 6)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_reference import LIMUBertModel4Pretrain  # noqa: E402

from limubert_jax import convert, embed  # noqa: E402
from limubert_jax.io import checkpoint, storage  # noqa: E402
from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertModel4Pretrain  # noqa: E402
from limubert_jax.models.recurrent import GRUClassifier, gru_v2  # noqa: E402


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _listing(path):
    return sorted(p.name for p in path.iterdir())


@pytest.fixture
def state_dict():
    torch.manual_seed(0)
    return LIMUBertModel4Pretrain(MODEL_CONFIGS["base_v1"]).state_dict()


def _from_torch_fails(tmp_path, capsys, obj, *fragments, raw_bytes=None):
    src = tmp_path / "in.pt"
    if raw_bytes is not None:
        src.write_bytes(raw_bytes)
    else:
        torch.save(obj, src)
    out = tmp_path / "out"
    assert convert.main(["from_torch", str(src), str(out)]) == 2
    line = _error_line(capsys)
    assert str(src) in line
    for fragment in fragments:
        assert fragment in line, line
    assert not out.exists()
    assert _listing(tmp_path) == ["in.pt"]  # no staging directory left behind
    return line


def test_garbage_file_is_not_a_state_dict(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, None, "not a readable PyTorch file", raw_bytes=b"hello, not a pickle\n")


def test_pickled_tensor_list_is_not_a_state_dict(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, [torch.zeros(3)], "not a state dict", "list")


def test_dict_with_non_tensor_values_is_not_a_state_dict(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, {"epoch": 3, "lr": 0.1}, "not a state dict", "'epoch'")


def test_unknown_model_keys(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, {"encoder.weight": torch.zeros(2, 2)}, "neither a LIMU-BERT", "encoder.weight")


def test_missing_key(tmp_path, capsys, state_dict):
    del state_dict["decoder.bias"]
    _from_torch_fails(tmp_path, capsys, state_dict, "missing key(s): decoder.bias")


def test_unexpected_key(tmp_path, capsys, state_dict):
    state_dict["extra.weight"] = torch.zeros(2)
    _from_torch_fails(tmp_path, capsys, state_dict, "unexpected key(s): extra.weight")


def test_shape_mismatch(tmp_path, capsys, state_dict):
    state_dict["decoder.weight"] = torch.zeros(9, 72)
    _from_torch_fails(tmp_path, capsys, state_dict, "'decoder.weight' has shape (9, 72), expected (6, 72)")


def test_wrong_rank_weight(tmp_path, capsys, state_dict):
    state_dict["transformer.embed.lin.weight"] = torch.zeros(72)
    _from_torch_fails(tmp_path, capsys, state_dict, "'transformer.embed.lin.weight' has shape (72,)")


def test_missing_input_file(tmp_path, capsys):
    assert convert.main(["from_torch", str(tmp_path / "nope.pt"), str(tmp_path / "out")]) == 2
    assert "nope.pt: no such file" in _error_line(capsys)
    assert _listing(tmp_path) == []


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys, state_dict):
    torch.save(state_dict, tmp_path / "in.pt")
    out = tmp_path / "out"
    assert convert.main(["from_torch", str(tmp_path / "in.pt"), str(out)]) == 0
    before = (out / "model_config.json").stat().st_mtime_ns
    assert convert.main(["from_torch", str(tmp_path / "in.pt"), str(out)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert (out / "model_config.json").stat().st_mtime_ns == before
    assert convert.main(["from_torch", str(tmp_path / "in.pt"), str(out), "--overwrite"]) == 0
    assert _listing(out) == ["README.md", "model_config.json", "params"]
    assert _listing(tmp_path) == ["in.pt", "out"]  # the old checkpoint is gone, not set aside


@pytest.mark.parametrize("overwrite", [False, True])
def test_overwrite_never_replaces_a_directory_that_is_not_a_checkpoint(tmp_path, capsys, state_dict, overwrite):
    # A training workdir: --overwrite used to replace all of it with the converted checkpoint.
    torch.save(state_dict, tmp_path / "in.pt")
    work = tmp_path / "work"
    (work / "checkpoints" / "150").mkdir(parents=True)
    (work / "metrics.jsonl").write_text("{}\n")
    (work / "notes.txt").write_text("mine")
    (work / "model_config.json").write_text("{}")
    args = ["from_torch", str(tmp_path / "in.pt"), str(work)] + (["--overwrite"] if overwrite else [])
    assert convert.main(args) == 2
    line = _error_line(capsys)
    if overwrite:
        for fragment in ("not a model checkpoint", "checkpoints/", "metrics.jsonl", "notes.txt"):
            assert fragment in line, line
    assert _listing(work) == ["checkpoints", "metrics.jsonl", "model_config.json", "notes.txt"]
    assert (work / "notes.txt").read_text() == "mine"
    assert _listing(tmp_path) == ["in.pt", "work"]


def test_overwrite_replaces_a_checkpoint_and_removes_a_dead_writers_staging(tmp_path, state_dict):
    torch.save(state_dict, tmp_path / "in.pt")
    out = tmp_path / "out"
    assert convert.main(["from_torch", str(tmp_path / "in.pt"), str(out)]) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = storage.staging_path(out, pid=dead.pid)  # as a SIGKILLed from-torch leaves it
    (leftover / "params").mkdir(parents=True)
    assert convert.main(["from_torch", str(tmp_path / "in.pt"), str(out), "--overwrite"]) == 0
    assert _listing(tmp_path) == ["in.pt", "out"]
    assert _listing(out) == ["README.md", "model_config.json", "params"]


def test_from_torch_into_an_empty_directory(tmp_path, state_dict):
    torch.save(state_dict, tmp_path / "in.pt")
    (tmp_path / "out").mkdir()
    assert convert.main(["from_torch", str(tmp_path / "in.pt"), str(tmp_path / "out")]) == 0
    assert _listing(tmp_path / "out") == ["README.md", "model_config.json", "params"]


def test_sparse_tensor_is_refused(tmp_path, capsys, state_dict):
    state_dict["decoder.bias"] = state_dict["decoder.bias"].to_sparse()
    _from_torch_fails(tmp_path, capsys, state_dict, "entry 'decoder.bias' is a sparse tensor")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_is_refused(tmp_path, capsys, state_dict, bad):
    state_dict["transformer.proj.weight"][3, 4] = bad
    _from_torch_fails(tmp_path, capsys, state_dict, "entry 'transformer.proj.weight' holds NaN or Inf")


class _RunsCode:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_without_suggesting_to_run_it(tmp_path, capsys):
    evil = _RunsCode()
    evil.marker = tmp_path / "ran"
    line = _from_torch_fails(
        tmp_path, capsys, {"transformer.embed.lin.weight": evil},
        "refused", "code or objects that are not plain tensors", "weights_only=True",
    )
    assert "weights_only set to False" not in line and "weights_only=False" not in line
    assert "Re-running" not in line
    assert not (tmp_path / "ran").exists()


def test_pt_output_name_equal_to_input_is_refused(tmp_path, capsys, state_dict):
    torch.save(state_dict, tmp_path / "in.pt")
    assert convert.main(["from_torch", str(tmp_path / "in.pt"), str(tmp_path / "in.pt"), "--overwrite"]) == 2
    assert "in.pt" in _error_line(capsys)
    assert torch.load(tmp_path / "in.pt", weights_only=True).keys() == state_dict.keys()


def test_to_torch_of_a_non_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert.main(["to_torch", str(tmp_path / "empty"), str(tmp_path / "out.pt")]) == 2
    assert "model_config.json" in _error_line(capsys)
    assert _listing(tmp_path) == ["empty"]


# --- embedding ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for name in ("base_v1", "base_v2"):
        cfg = MODEL_CONFIGS[name]
        checkpoint.save_model(root / name, LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), cfg)
    clf = gru_v2(num_classes=3)
    checkpoint.save_model(root / "gru", GRUClassifier(clf).init_params(jax.random.key(0)), clf)
    return root


def _embed_fails(tmp_path, capsys, ckpt, windows, *fragments, extra=()):
    src = tmp_path / "x.npy"
    np.save(src, windows)
    out = tmp_path / "e.npy"
    assert embed.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), *extra]) == 2
    line = _error_line(capsys)
    for fragment in fragments:
        assert fragment in line, line
    assert _listing(tmp_path) == ["x.npy"]  # no output, no staging file
    return line


def test_nine_feature_weights_with_six_feature_input(tmp_path, capsys, checkpoints):
    windows = np.zeros((4, 120, 6), np.float32)
    _embed_fails(tmp_path, capsys, checkpoints / "base_v2", windows, "x.npy", "(4, 120, 6)", "F=6", "trained on 9")


def test_normalized_input_needs_exact_feature_count(tmp_path, capsys, checkpoints):
    windows = np.zeros((4, 120, 9), np.float32)
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", windows, "F=9", "exactly 6", extra=["--input_normalized"])


@pytest.mark.parametrize("shape", [(120, 6), (2, 3, 120, 6)])
def test_wrong_rank(tmp_path, capsys, checkpoints, shape):
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", np.zeros(shape, np.float32), "(N, S, F)", str(shape))


def test_too_long_windows(tmp_path, capsys, checkpoints):
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", np.zeros((2, 121, 6), np.float32), "S=121", "1..120")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_names_the_window(tmp_path, capsys, checkpoints, bad):
    windows = np.ones((10, 120, 6), np.float32)
    windows[7, 30, 2] = bad
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", windows, "window 7", "NaN or Inf", extra=["--batch_size", "4"])


def test_classifier_checkpoint_cannot_embed(tmp_path, capsys, checkpoints):
    _embed_fails(tmp_path, capsys, checkpoints / "gru", np.zeros((1, 120, 6), np.float32), "gru_classifier checkpoint")


def test_input_that_is_not_npy(tmp_path, capsys, checkpoints):
    src = tmp_path / "x.npy"
    src.write_text("a,b,c\n")
    assert embed.main(["--checkpoint", str(checkpoints / "base_v1"), "--input", str(src), "--output", str(tmp_path / "e.npy")]) == 2
    assert "not a readable .npy" in _error_line(capsys)
    assert _listing(tmp_path) == ["x.npy"]


def test_zero_byte_input(tmp_path, capsys, checkpoints):
    (tmp_path / "x.npy").write_bytes(b"")
    assert embed.main(["--checkpoint", str(checkpoints / "base_v1"), "--input", str(tmp_path / "x.npy"),
                       "--output", str(tmp_path / "e.npy")]) == 2
    assert "x.npy: is empty (0 bytes)" in _error_line(capsys)
    assert _listing(tmp_path) == ["x.npy"]


def test_npz_input(tmp_path, capsys, checkpoints):
    np.savez(tmp_path / "x.npz", windows=np.zeros((2, 120, 6), np.float32))
    assert embed.main(["--checkpoint", str(checkpoints / "base_v1"), "--input", str(tmp_path / "x.npz"),
                       "--output", str(tmp_path / "e.npy")]) == 2
    line = _error_line(capsys)
    assert "x.npz: is an .npz archive" in line and "windows" in line
    assert _listing(tmp_path) == ["x.npz"]


@pytest.mark.parametrize("size", ["0", "-3", "two"])
def test_batch_size_must_be_a_positive_integer(tmp_path, capsys, checkpoints, size):
    np.save(tmp_path / "x.npy", np.zeros((2, 120, 6), np.float32))
    with pytest.raises(SystemExit) as exit_info:
        embed.main(["--checkpoint", str(checkpoints / "base_v1"), "--input", str(tmp_path / "x.npy"),
                    "--output", str(tmp_path / "e.npy"), "--batch_size", size])
    assert exit_info.value.code == 2
    assert "argument --batch_size" in capsys.readouterr().err
    assert _listing(tmp_path) == ["x.npy"]


def test_huge_finite_input_gives_an_error_not_nan_embeddings(tmp_path, capsys, checkpoints):
    windows = np.ones((5, 120, 6), np.float32)
    windows[3] = 3e38  # finite, but the model's arithmetic overflows
    src, out = tmp_path / "x.npy", tmp_path / "e.npy"
    np.save(src, windows)
    assert embed.main(["--checkpoint", str(checkpoints / "base_v1"), "--input", str(src), "--output", str(out),
                       "--batch_size", "2"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's line
    for fragment in ("x.npy", "embedding of window 3 is not finite", "3e+38", "non-finite model weights"):
        assert fragment in line, line
    assert _listing(tmp_path) == ["x.npy"]


# --- outputs: refusals, sidecar, staging ------------------------------------------------


def _embed_args(ckpt, src, out, *extra):
    return ["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), *extra]


def test_embed_refuses_an_existing_output_without_overwrite(tmp_path, capsys, checkpoints):
    np.save(tmp_path / "x.npy", np.ones((2, 120, 6), np.float32))
    (tmp_path / "e.npy").write_text("mine")
    args = _embed_args(checkpoints / "base_v1", tmp_path / "x.npy", tmp_path / "e.npy")
    assert embed.main(args) == 2
    assert "e.npy: already exists (pass --overwrite" in _error_line(capsys)
    assert (tmp_path / "e.npy").read_text() == "mine"
    assert embed.main(args + ["--overwrite"]) == 0
    assert np.load(tmp_path / "e.npy").shape == (2, 120, 72)
    assert _listing(tmp_path) == ["e.npy", "x.npy"]


@pytest.mark.parametrize("spelling", ["same", "dotdot", "hardlink"])
def test_embed_output_that_is_the_input_is_refused(tmp_path, capsys, checkpoints, spelling):
    windows = np.ones((2, 120, 6), np.float32)
    src = tmp_path / "x.npy"
    np.save(src, windows)
    out = {"same": src, "dotdot": tmp_path / "sub" / ".." / "x.npy", "hardlink": tmp_path / "link.npy"}[spelling]
    if spelling == "hardlink":
        out.hardlink_to(src)
    assert embed.main(_embed_args(checkpoints / "base_v1", src, out, "--overwrite")) == 2
    assert "is also an input" in _error_line(capsys)
    np.testing.assert_array_equal(np.load(src), windows)


def _nan_checkpoint(root):
    cfg = MODEL_CONFIGS["base_v1"]
    params = LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0))
    params = jax.tree_util.tree_map(np.array, params)
    params["transformer"]["proj"]["kernel"][0, 0] = np.nan
    return checkpoint.save_model(root / "nan_ckpt", params, cfg)


def test_checkpoint_with_non_finite_parameters_is_refused(tmp_path, capsys):
    ckpt = _nan_checkpoint(tmp_path)
    assert convert.main(["to_torch", str(ckpt), str(tmp_path / "out.pt")]) == 2
    assert "parameter 'transformer/proj/kernel' holds NaN or Inf" in _error_line(capsys)
    np.save(tmp_path / "x.npy", np.ones((2, 120, 6), np.float32))
    assert embed.main(_embed_args(ckpt, tmp_path / "x.npy", tmp_path / "e.npy")) == 2
    assert "parameter 'transformer/proj/kernel' holds NaN or Inf" in _error_line(capsys)
    assert _listing(tmp_path) == ["nan_ckpt", "x.npy"]


def test_to_torch_refuses_existing_outputs_without_overwrite(tmp_path, capsys, checkpoints):
    ckpt, out = checkpoints / "base_v1", tmp_path / "out.pt"
    for existing in ("out.pt", "out.json"):
        (tmp_path / existing).write_text("mine")
        assert convert.main(["to_torch", str(ckpt), str(out)]) == 2
        assert f"{existing}: already exists (pass --overwrite" in _error_line(capsys)
        assert _listing(tmp_path) == [existing] and (tmp_path / existing).read_text() == "mine"
        (tmp_path / existing).unlink()
    assert convert.main(["to_torch", str(ckpt), str(out)]) == 0
    assert convert.main(["to_torch", str(ckpt), str(out), "--overwrite"]) == 0
    assert _listing(tmp_path) == ["out.json", "out.pt"]


@pytest.mark.parametrize("name", ["out.json", "OUT.JSON"])
def test_to_torch_refuses_an_output_its_sidecar_would_overwrite(tmp_path, capsys, checkpoints, name):
    # The sidecar is OUT with its suffix replaced by .json: for OUT.json, OUT itself.
    assert convert.main(["to_torch", str(checkpoints / "base_v1"), str(tmp_path / name), "--overwrite"]) == 2
    assert "ends in .json" in _error_line(capsys)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("name, sidecar", [("uci.pt", "uci.json"), ("uci", "uci.json"), ("uci.v2.pth", "uci.v2.json")])
def test_to_torch_sidecar_name(tmp_path, checkpoints, name, sidecar):
    assert convert.sidecar_path(tmp_path / name) == tmp_path / sidecar
    assert convert.main(["to_torch", str(checkpoints / "gru"), str(tmp_path / name)]) == 0
    assert _listing(tmp_path) == sorted([name, sidecar])


def test_to_torch_writes_both_files_or_neither(tmp_path, checkpoints, monkeypatch):
    write_bytes = pathlib.Path.write_bytes

    def fail_on_sidecar(self, data):  # the state dict is already staged by then
        if self.name.startswith(".out.json.tmp-"):
            raise RuntimeError("disk gone")
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", fail_on_sidecar)
    with pytest.raises(RuntimeError, match="disk gone"):
        convert.to_torch(checkpoints / "base_v1", tmp_path / "out.pt")
    assert _listing(tmp_path) == []


def test_outputs_follow_the_umask(tmp_path, checkpoints):
    previous = os.umask(0o022)
    try:
        np.save(tmp_path / "x.npy", np.ones((2, 120, 6), np.float32))
        assert embed.main(_embed_args(checkpoints / "base_v1", tmp_path / "x.npy", tmp_path / "e.npy")) == 0
        assert convert.main(["to_torch", str(checkpoints / "base_v1"), str(tmp_path / "out.pt")]) == 0
        assert convert.main(["from_torch", str(tmp_path / "out.pt"), str(tmp_path / "ckpt")]) == 0
    finally:
        os.umask(previous)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("e.npy", "out.pt", "out.json", "ckpt")}
    assert modes == {"e.npy": 0o644, "out.pt": 0o644, "out.json": 0o644, "ckpt": 0o755}


def test_a_sigterm_whose_exception_was_lost_still_ends_the_command():
    """The SIGTERM handler's exception can vanish where the main thread happened to be (a
    callback from compiled code); the next `check_terminated` of a long loop ends the command."""
    import signal

    from limubert_jax.runtime import errors

    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        except errors.Terminated:
            pass  # what a swallowing caller does
        errors.check_terminated()
        raise AssertionError("the command went on after SIGTERM")

    assert errors.run_cli(main, []) == 143
    errors.check_terminated()  # cleared: the next command in this process is not ended by it
    assert errors.run_cli(lambda argv: None, []) == 0
