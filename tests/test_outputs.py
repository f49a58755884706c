"""Output safety of every writing command: no output inside an input, no silent replacement of
an output that appeared during the run, one line (not a traceback) for a full or read-only
destination with nothing partial left, and formats named for what they are.

The destination tests need a real full disk and a real read-only file system (root ignores
permissions): one child process in its own mount namespace (`unshare -m`) mounts small tmpfs
file systems and runs every command's `main` in-process there (`_driver`, this file run as a
script), reporting each one's exit status, stderr and leftover files as JSON.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SEQ = 40


# --- tiny models ------------------------------------------------------------------------


def _save_tiny_models(root: Path) -> dict[str, str]:
    """A tiny LIMU-BERT checkpoint, a tiny classifier run, windows for both, and the
    checkpoint as a PyTorch state dict (`from_torch`'s input). Returns their paths."""
    sys.path.insert(0, str(TESTS))
    from conftest import random_params, random_pipeline_params
    from limubert_jax import convert
    from limubert_jax.io import checkpoint
    from limubert_jax.models import pipeline
    from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
    from limubert_jax.models.pipeline import ClassifierPipelineConfig

    encoder = LimuBertConfig(feature_num=6, hidden=8, hidden_ff=16, n_layers=1, n_heads=2, seq_len=SEQ)
    ckpt = checkpoint.save_model(root / "ckpt", random_params(LimuBertModel4Pretrain(encoder).init_params), encoder)
    config = ClassifierPipelineConfig(method="limu_gru_v2", head="gru_v2", class_names=("a", "b"), label="activity",
                                      seq_len=SEQ, merge=20, feature_num=6, encoder=encoder, sampling_rate_hz=20,
                                      dataset="test/20_40")
    run = root / "run"
    checkpoint.save_model(run / pipeline.MODEL_DIR, random_pipeline_params(config), config)
    windows = np.random.default_rng(0).normal(0.0, 1.0, (3, SEQ, 6)).astype(np.float32)
    np.save(root / "x.npy", windows)
    convert.to_torch(ckpt, root / "ckpt.pt")
    return {"ckpt": str(ckpt), "run": str(run), "npy": str(root / "x.npy"), "pt": str(root / "ckpt.pt")}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return {k: Path(v) for k, v in _save_tiny_models(tmp_path_factory.mktemp("models")).items()}


def _error(capsys) -> str:
    """The one `error:` line of a command's stderr (progress bars aside), and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- 1. no output inside an input -------------------------------------------------------


def test_outputs_inside_an_input_directory_are_refused(tmp_path):
    from limubert_jax.io import storage
    from limubert_jax.runtime.errors import LimuBertError

    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "a.csv").write_text("t,acc_x\n")
    (tmp_path / "alias").symlink_to(rec)
    (tmp_path / "hard.csv").hardlink_to(rec / "a.csv")
    refused = {
        rec / "one.csv": "is inside the input",
        tmp_path / "alias" / "one.csv": "is inside the input",  # through a symlinked folder
        rec / "new" / ".." / "one.csv": "is inside the input",
        rec / "a.csv": "is inside the input",
        tmp_path / "hard.csv": "is a hard link to a file of the input",
    }
    for output, message in refused.items():
        with pytest.raises(LimuBertError, match=message):
            storage.check_output_file(output, rec, overwrite=True)
    with pytest.raises(LimuBertError, match="holds the input"):  # a directory output replaced whole
        storage.check_not_input(tmp_path, rec / "a.csv")
    storage.check_output_file(tmp_path / "one.csv", rec, overwrite=True)  # beside it is fine
    with pytest.raises(LimuBertError, match="is inside the input gs://b/run"):
        storage.check_not_input("gs://b/run/model/out.csv", "gs://b/run/")
    storage.check_not_input("gs://b/run2/out.csv", "gs://b/run")  # a prefix of the name, not a folder


def test_the_main_job_refuses_a_workdir_or_data_dir_inside_its_data(tmp_path):
    """A workdir inside the recordings folder would put checkpoints among the recordings."""
    from limubert_jax import config_lib, tasks
    from limubert_jax.io import storage
    from limubert_jax.runtime.errors import LimuBertError

    rec = tmp_path / "rec"
    rec.mkdir()
    default = config_lib.sibling_config(str(config_lib.configs_dir() / "default.py"), "default").get_config()
    config = config_lib.with_dataset(default, "recordings", "20_40")
    config.dataset.manual_dir = f"{tmp_path / 'other'}+{tmp_path / 'alias'}"
    (tmp_path / "alias").symlink_to(rec)
    for workdir, data_dir, field in ((rec / "run", None, "--workdir"), (tmp_path / "run", rec / "tfds",
                                                                          "config.dataset.data_dir")):
        config.dataset.data_dir = None if data_dir is None else str(data_dir)
        with pytest.raises(LimuBertError, match=rf"^{re.escape(field)}=.* is inside config\.dataset\.manual_dir="
                                                rf".*alias: the job would write into its input data"):
            tasks.run(config, workdir)
    assert os.listdir(rec) == [] and not (tmp_path / "run").exists()
    assert storage.is_within("gs://b/data/tfds", "gs://b/data") and not storage.is_within("gs://b/data2", "gs://b/data")


def test_commands_refuse_an_output_inside_what_they_read(tmp_path, models, capsys):
    from limubert_jax import convert, embed, predict

    ckpt, run, npy, pt = models["ckpt"], models["run"], models["npy"], models["pt"]
    before = {p: _listing(p) for p in (ckpt, run)}
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "walk.csv").write_text("t,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n0,0,0,9.8,0,0,0\n")
    cases = [
        (predict.main, ["--model", str(run), "--input", str(rec), "--output", str(rec / "one.csv"), "--overwrite"]),
        (embed.main, ["--checkpoint", str(ckpt), "--input", str(npy), "--output", str(ckpt / "model_config.json"),
                      "--overwrite"]),
        (embed.main, ["--checkpoint", str(ckpt), "--input", str(npy), "--output", str(ckpt / "e.npy")]),
        (convert.main, ["to_torch", str(ckpt), str(ckpt / "params" / "_METADATA"), "--overwrite"]),
        (convert.main, ["to_torch", str(run), str(run / "model.pt")]),
        (convert.main, ["to_onnx", str(run), str(run / "model.onnx")]),
        (convert.main, ["from_torch", str(pt), str(pt.parent), "--overwrite"]),  # OUT holds IN
    ]
    for command, argv in cases:
        assert command(argv) == 2, argv
        line = _error(capsys)
        assert "could destroy the input" in line or "is also an input" in line, line
    assert (rec / "walk.csv").read_text().startswith("t,acc_x")
    assert not (rec / "one.csv").exists()
    assert {p: _listing(p) for p in (ckpt, run)} == before


# --- 2. an output that appears during the run is not replaced --------------------------


def _without_renameat2(monkeypatch, renameat2: bool) -> None:
    from limubert_jax.io import storage

    if not renameat2:  # kernels or file systems without it: the fallbacks
        monkeypatch.setattr(storage, "_renameat2", lambda: None)


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_a_target_that_appears_during_the_write_is_kept(tmp_path, monkeypatch, renameat2):
    from limubert_jax.io import storage
    from limubert_jax.runtime.errors import LimuBertError

    _without_renameat2(monkeypatch, renameat2)

    out = tmp_path / "out.csv"
    with pytest.raises(LimuBertError, match="out.csv: appeared while this command ran; pass --overwrite"):
        with storage.staged(out, replace=False) as (tmp,):
            tmp.write_text("mine")
            out.write_text("theirs")
    assert _listing(tmp_path) == ["out.csv"] and out.read_text() == "theirs"
    with storage.staged(out, replace=True) as (tmp,):  # what --overwrite asks for
        tmp.write_text("mine")
    assert out.read_text() == "mine"

    # Files written together: neither lands when one of them appeared.
    a, b = tmp_path / "m.pt", tmp_path / "m.json"
    with pytest.raises(LimuBertError, match="m.json: appeared"):
        with storage.staged(a, b, replace=False) as (ta, tb):
            ta.write_text("a")
            tb.write_text("b")
            b.write_text("theirs")
    assert not a.exists() and b.read_text() == "theirs"

    # A checkpoint directory (renamed whole); an empty directory counts as absent.
    d = tmp_path / "ckpt"
    d.mkdir()
    with storage.staged(d, directory=True, replace=False) as (td,):
        (td / "f").write_text("1")
    assert (d / "f").read_text() == "1"
    with pytest.raises(LimuBertError, match="ckpt2: appeared"):
        with storage.staged(tmp_path / "ckpt2", directory=True, replace=False) as (td,):
            (td / "f").write_text("mine")
            (tmp_path / "ckpt2").mkdir()
            (tmp_path / "ckpt2" / "g").write_text("theirs")
    assert _listing(tmp_path / "ckpt2") == ["g"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_two_racing_writers_one_wins_whole(tmp_path, monkeypatch, renameat2):
    from limubert_jax.io import storage
    from limubert_jax.runtime.errors import LimuBertError

    _without_renameat2(monkeypatch, renameat2)
    out = tmp_path / "e.npy"
    barrier, results = threading.Barrier(8), {}

    def writer(i):
        try:
            with storage.staged(out, replace=False) as (tmp,):
                tmp.write_bytes(bytes([i]) * 100_000)
                barrier.wait()
            results[i] = "won"
        except LimuBertError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r == "won"]
    assert len(winners) == 1, results
    assert all("appeared while this command ran" in r for r in results.values() if r != "won")
    assert out.read_bytes() == bytes([winners[0]]) * 100_000
    assert _listing(tmp_path) == ["e.npy"]


def test_commands_do_not_replace_an_output_that_appeared_while_they_ran(tmp_path, models, capsys, monkeypatch):
    from limubert_jax import convert, embed
    from limubert_jax.io import checkpoint, storage

    out = tmp_path / "e.npy"
    real = embed.embed_windows

    def slow_embed(*args, **kwargs):  # another run of the command finishes first
        np.save(out, np.zeros(1))
        return real(*args, **kwargs)

    monkeypatch.setattr(embed, "embed_windows", slow_embed)
    assert embed.main(["--checkpoint", str(models["ckpt"]), "--input", str(models["npy"]), "--output", str(out)]) == 2
    assert "e.npy: appeared while this command ran; pass --overwrite to replace it" in _error(capsys)
    assert _listing(tmp_path) == ["e.npy"] and np.load(out).shape == (1,)
    out.unlink()
    assert embed.main(["--checkpoint", str(models["ckpt"]), "--input", str(models["npy"]), "--output", str(out),
                       "--overwrite"]) == 0
    assert np.load(out).shape == (3, SEQ, 8)
    monkeypatch.undo()

    # convert: the sidecar of to_torch, and the checkpoint directory of from_torch.
    real_load = checkpoint.load_model

    def load_then_appear(path):
        (tmp_path / "m.json").write_text("theirs")
        return real_load(path)

    monkeypatch.setattr(checkpoint, "load_model", load_then_appear)
    capsys.readouterr()
    assert convert.main(["to_torch", str(models["ckpt"]), str(tmp_path / "m.pt")]) == 2
    assert re.search(r"m\.json: (appeared while this command ran|already exists); pass --overwrite|"
                     r"m\.json: already exists \(pass --overwrite", _error(capsys))
    assert not (tmp_path / "m.pt").exists() and (tmp_path / "m.json").read_text() == "theirs"
    monkeypatch.undo()

    real_staged = storage.staged

    @contextlib.contextmanager
    def staged_then_appear(*paths, **kwargs):
        with real_staged(*paths, **kwargs) as tmps:
            yield tmps
            (tmp_path / "c").mkdir()
            (tmp_path / "c" / "theirs").write_text("x")

    monkeypatch.setattr(storage, "staged", staged_then_appear)
    assert convert.main(["from_torch", str(models["pt"]), str(tmp_path / "c"), "--n_layers=1", "--n_heads=2"]) == 2
    assert "c: appeared while this command ran" in _error(capsys)
    assert _listing(tmp_path / "c") == ["theirs"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# --- 4. formats named for what they are -------------------------------------------------


def test_from_torch_names_the_format_it_found(tmp_path, models, capsys):
    from limubert_jax import convert
    from limubert_jax.io import safetensors

    np.save(tmp_path / "w.npy", np.zeros(3))
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    (tmp_path / "w.safetensors").write_bytes(safetensors.dumps({"a": np.zeros(3, np.float32)}))
    (tmp_path / "w.json").write_text('{"hidden": 72}')
    (tmp_path / "w.pt").write_text("[1, 2]")  # the name does not decide
    expected = {"w.npy": "is a NumPy .npy array, not a PyTorch state dict",
                "w.npz": "is a NumPy .npz archive, not a PyTorch state dict",
                "w.safetensors": "is a safetensors file, not a PyTorch state dict",
                "w.json": "is JSON text, not a PyTorch state dict",
                "w.pt": "is JSON text, not a PyTorch state dict"}
    for name, message in expected.items():
        assert convert.main(["from_torch", str(tmp_path / name), str(tmp_path / "out")]) == 2
        line = _error(capsys)
        assert message in line and "code or objects" not in line, line
    # A real state dict still converts.
    assert convert.main(["from_torch", str(models["pt"]), str(tmp_path / "out"), "--n_layers=1", "--n_heads=2"]) == 0


def test_the_window_reader_names_the_command(tmp_path):
    from limubert_jax import embed
    from limubert_jax.runtime.errors import LimuBertError

    np.savez(tmp_path / "w.npz", windows=np.zeros((1, SEQ, 6)))
    with pytest.raises(LimuBertError, match="predict takes one .npy array"):
        embed.open_windows(tmp_path / "w.npz", command="predict")
    with pytest.raises(LimuBertError, match="embed takes one .npy array"):
        embed.open_windows(tmp_path / "w.npz")


# --- 3. full and read-only destinations -------------------------------------------------


def test_destination_errors_are_found_through_wrapping_exceptions():
    from limubert_jax.runtime.errors import destination_error

    assert destination_error(OSError(errno.EROFS, "Read-only file system", "/d/out.csv")) == (
        "/d/out.csv: read-only file system (EROFS; write elsewhere)")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/d/x")
        except OSError as e:
            raise ValueError("Orbax: save failed") from e
    except ValueError as wrapped:
        assert destination_error(wrapped).startswith("/d/x: no space left on the device")
    # TensorStore keeps only the words.
    line = destination_error(RuntimeError('Error writing "/w/checkpoints/1/state/d/0": [Errno 28] '
                                          "No space left on device"))
    assert line.startswith("/w/checkpoints/1/state/d/0: no space left on the device")
    assert destination_error(ValueError("bad value")) is None


def test_a_failed_staged_write_names_its_output_not_the_staging_file(tmp_path):
    from limubert_jax.io import storage
    from limubert_jax.runtime.errors import LimuBertError

    def failing(error):
        with storage.staged(tmp_path / "p.csv") as (tmp,):
            tmp.write_text("half")
            raise error

    with pytest.raises(LimuBertError, match=r"p\.csv: no space left on the device \(ENOSPC; "):
        failing(OSError(errno.ENOSPC, "No space left on device"))  # write() names no file
    with pytest.raises(LimuBertError, match=r"p\.csv: no space left on the device"):  # Orbax keeps the words
        failing(ValueError(f'RESOURCE_EXHAUSTED: writing "{tmp_path}/.p.csv.tmp-x/d/0": No space left on device'))
    with pytest.raises(LimuBertError, match=r"^/in/x\.npy: permission denied"):  # an input's own error
        failing(OSError(errno.EACCES, "Permission denied", "/in/x.npy"))
    with pytest.raises(ValueError, match="other"):
        failing(ValueError("other"))
    assert _listing(tmp_path) == []


# Each command runs with its output in a folder `{D}` of its own, a tmpfs mounted "full"
# (filled to the last byte first), "ro" (read-only) or, for the main job, "small" (64 KiB:
# room for a run's small files but not for its checkpoint).
_CASES = [  # (name, command module, argv, the output the error line names)
    ("predict", "predict", ["--model", "{run}", "--input", "{npy}", "--output", "{D}/p.csv"], "p.csv"),
    ("embed", "embed", ["--checkpoint", "{ckpt}", "--input", "{npy}", "--output", "{D}/e.npy"], "e.npy"),
    ("to_torch", "convert", ["to_torch", "{ckpt}", "{D}/m.pt"], "m.pt"),
    ("to_safetensors", "convert", ["to_torch", "{ckpt}", "{D}/m.safetensors"], "m.safetensors"),
    ("to_onnx", "convert", ["to_onnx", "{run}", "{D}/m.onnx"], "m.onnx"),
    ("from_torch", "convert", ["from_torch", "{pt}", "{D}/c", "--n_layers=1", "--n_heads=2"], "c"),
    ("prepare_data", "prepare_data", ["--config={root}/tests/configs/test.py", "--config.dataset.data_dir={D}/tfds"],
     "tfds"),
]
_MAIN_JOB = ("main", "main", ["--config={root}/tests/configs/test.py", "--workdir={D}/run",
                              "--config.dataset.data_dir={data}", "--config.train.num_epochs=1",
                              "--config.dataset.train_rate=0.05"])


def _driver(spec_path: str) -> None:
    """Runs inside `unshare -m`: for each case, mounts a tmpfs at its folder, runs the
    command's `main` in this process and records what came out."""
    import importlib

    spec = json.loads(Path(spec_path).read_text())
    paths = spec["paths"]
    results = []
    for name, mount, module, argv in spec["cases"]:
        folder = Path(spec["base"]) / f"{name}-{mount}"
        folder.mkdir(parents=True)
        size = "64k" if mount == "small" else "1m"
        options = f"size={size}" + (",ro" if mount == "ro" else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "none", str(folder)], check=True)
        if mount == "full":
            fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
            os.close(fd)
        args = [a.format(D=folder, **paths) for a in argv]
        start = time.monotonic()
        # File descriptor 2 itself: log handlers (absl's, Orbax's threads) keep the stream
        # they started with, which a swap of sys.stderr does not reach.
        with open(Path(spec["base"]) / f"{name}-{mount}.err", "w+") as err:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(err.fileno(), 2)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    status = importlib.import_module(f"limubert_jax.{module}").main(args)
            except BaseException:  # noqa: BLE001  (a traceback is what the test looks for)
                traceback.print_exc()
                status = "traceback"
            finally:
                sys.stderr.flush()
                time.sleep(0.2)  # what background threads still log about this command
                os.dup2(saved, 2)
                os.close(saved)
            err.seek(0)
            stderr = err.read()
        left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != "filler")
        steps = None
        if module == "main" and (folder / "run" / "checkpoints").is_dir():  # what a resume would see
            from limubert_jax.io import workdir

            checkpoints = workdir.RunCheckpoints(folder / "run")
            steps = checkpoints.steps()
            checkpoints.close()
        results.append({"name": name, "mount": mount, "folder": str(folder), "status": status, "stderr": stderr,
                        "left": left, "steps": steps, "seconds": round(time.monotonic() - start, 1)})
    print(json.dumps(results))


def _unshare_available() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k none /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -m cannot mount here ({probe.stderr.strip()})"


@pytest.fixture(scope="module")
def destinations(tmp_path_factory, models, synthetic_data_dir) -> dict[tuple[str, str], dict]:
    """Every command run against a full and a read-only destination (and the main job
    against one too small for its checkpoint), in one child in its own mount namespace."""
    reason = _unshare_available()
    if reason:
        pytest.skip(reason)
    cases = [(name, mount, module, argv) for mount in ("full", "ro") for name, module, argv, _ in _CASES]
    cases += [(_MAIN_JOB[0], "small", _MAIN_JOB[1], _MAIN_JOB[2]), (_MAIN_JOB[0], "ro", _MAIN_JOB[1], _MAIN_JOB[2])]
    work = tmp_path_factory.mktemp("destinations")
    paths = {**{k: str(v) for k, v in models.items()}, "root": str(ROOT), "data": str(synthetic_data_dir)}
    spec = work / "spec.json"
    spec.write_text(json.dumps({"base": str(work / "mounts"), "paths": paths, "cases": cases}))
    sys.path.insert(0, str(TESTS))
    from conftest import child_env

    done = subprocess.run(["unshare", "-m", sys.executable, __file__, str(spec)], capture_output=True, text=True,
                          env=child_env(), cwd=work, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {(r["name"], r["mount"]): r for r in json.loads(done.stdout.strip().splitlines()[-1])}


_EXPECTED = {"full": "no space left on the device", "small": "no space left on the device",
             "ro": "read-only file system"}


@pytest.mark.parametrize("mount", ["full", "ro"])
@pytest.mark.parametrize("name,output", [(name, output) for name, _, _, output in _CASES])
def test_a_full_or_read_only_destination_is_one_line(destinations, name, output, mount):
    result = destinations[(name, mount)]
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]  # progress bars aside
    assert result["status"] == 2 and len(lines) == 1 and "Traceback" not in result["stderr"], result
    assert lines[0].startswith(f"error: {result['folder']}/{output}: {_EXPECTED[mount]} ("), result
    # Nothing partial: no staging file, no half-built dataset (TFDS's build lock is empty and reused).
    assert [p for p in result["left"] if not p.endswith(".build-lock")] in ([], ["tfds"]), result


@pytest.mark.parametrize("mount", ["small", "ro"])
def test_the_main_job_on_a_full_or_read_only_workdir_is_one_line(destinations, mount):
    result = destinations[("main", mount)]
    errors = [line for line in result["stderr"].splitlines() if "Traceback" in line or line.startswith("error:")]
    assert result["status"] == 2 and len(errors) == 1, result
    # Not Orbax's writer threads' logs (before: 300 lines of them above the error).
    assert "ERROR" not in result["stderr"] and "exception was never retrieved" not in result["stderr"], result
    assert _EXPECTED[mount] in errors[0].lower(), result
    assert result["steps"] in (None, []), result  # a resume sees no half-written step (Orbax's tmp folders)


if __name__ == "__main__":
    _driver(sys.argv[1])
