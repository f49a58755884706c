"""Every user path may be an object-store URI: pretraining, downstream tasks, embed and
convert run here on `gs://` paths served by a fake bucket, with no network.

The fake bucket is etils' own test hook (`epath.testing.mock_epath`): every epath backend
is replaced by one that keeps `gs://test-bucket/...` under a local directory and behaves
like an object store where that matters (no renames, no appends). Orbax reaches GCS through
epath too, except for two calls patched here: its tensorstore kvstore (a `file` kvstore in
the same directory instead of the `gcs` driver) and its HNS bucket query.

Our code sees only `gs://` strings and epath objects. A `pathlib.Path` left on a user path
makes a local path of the URI: `Path("gs://test-bucket/x")` is the relative `gs:/test-bucket/x`,
and `Path(epath.Path("gs://test-bucket/x"))` the absolute `/gs/test-bucket/x` (epath's inner
form of the URI). The fake bucket never sees those, so reads fail; and an audit hook records
(and refuses) every file operation of the process on such a local path (`open`, `mkdir`, `listdir`, ...,
from numpy, torch and pathlib alike), which the fixture requires to be none.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

from limubert_jax import config_lib, convert, embed, tasks
from limubert_jax.data.synthetic import synthetic_windows
from limubert_jax.downstream import report, runners
from limubert_jax.io import checkpoint, plots, storage
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "gs://test-bucket"


# Local file operations on a URI turned local path while a fake bucket is in use; None
# when none is (an audit hook cannot be removed, so it stays installed and idle).
_LOCAL_URI_ACCESSES: list[str] | None = None
_FILE_EVENTS = frozenset({"open", "os.mkdir", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.replace",
                          "os.rmdir", "os.chmod", "os.utime", "os.truncate", "shutil.rmtree", "shutil.copyfile"})


class LocalUriAccess(RuntimeError):
    pass


def _audit(event: str, args: tuple) -> None:
    if _LOCAL_URI_ACCESSES is None or event not in _FILE_EVENTS:
        return
    for arg in args[:2]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            path = os.fsdecode(os.fspath(arg))
            if "gs:/" in path or os.path.abspath(path).startswith("/gs/"):
                _LOCAL_URI_ACCESSES.append(f"{event} {path}")
                # Refused too, so that nothing lands outside the test's directories; recorded
                # first, in case the code under test swallows the error.
                raise LocalUriAccess(f"{event} {path}: a gs:// path used as a local path")


sys.addaudithook(_audit)


class FakeBucket:
    """Maps `gs://...` to files under `root` (a local directory) and back."""

    def __init__(self, root: Path):
        self.root = root

    def local(self, path) -> str:
        path = os.fspath(path)
        return str(self.root / path.removeprefix("gs://")) if path.startswith("gs://") else path

    def uri(self, path) -> str:
        path = os.fspath(path)
        inside = os.path.relpath(path, self.root)
        return path if inside.startswith("..") else "gs://" + inside

    def files(self) -> list[str]:
        """Every object, as a `gs://` URI."""
        return sorted(self.uri(os.path.join(d, f)) for d, _, files in os.walk(self.root) for f in files)

    def mocks(self) -> dict:
        """The backend functions of `mock_epath`: each gets the original and its arguments."""

        def plain(original, path, *args, **kwargs):
            return original(self.local(path), *args, **kwargs)

        def open_(original, path, mode):
            if str(path).startswith("gs://"):
                if "a" in mode:
                    raise OSError(f"{path}: objects cannot be appended to")
                if "w" in mode:  # an object needs no directory
                    os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
            return original(self.local(path), mode)

        def no_rename(original, path, dst, *args, **kwargs):
            if str(path).startswith("gs://") or str(dst).startswith("gs://"):
                raise OSError(f"{path} -> {dst}: objects cannot be renamed into place")
            return original(path, dst, *args, **kwargs)

        def copy(original, path, dst, **kwargs):
            return original(self.local(path), self.local(dst), **kwargs)

        def glob(original, pattern):
            return [self.uri(p) for p in original(self.local(pattern))]

        def walk(original, top, **kwargs):
            for root, dirs, files in original(self.local(top), **kwargs):
                yield self.uri(root), dirs, files

        functions = {name: plain for name in ("exists", "isdir", "listdir", "makedirs", "mkdir", "remove",
                                               "rmtree", "stat")}
        return dict(functions, open=open_, rename=no_rename, replace=no_rename, copy=copy, glob=glob, walk=walk)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    global _LOCAL_URI_ACCESSES
    fake = FakeBucket(tmp_path / "bucket-objects")
    (fake.root / BUCKET.removeprefix("gs://")).mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where a pathlib-mangled `gs:/...` path would be written
    monkeypatch.setenv("EPATH_USE_TF", "0")  # epath would prefer TensorFlow's GCS file system
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": fake.local(path)})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    _LOCAL_URI_ACCESSES = accesses = []
    try:
        with epath_testing.mock_epath(**fake.mocks()):
            yield fake
    finally:
        _LOCAL_URI_ACCESSES = None
    assert accesses == [], "gs:// paths were used as local paths (through pathlib?)"
    assert os.listdir(cwd) == [], "a gs:// path was written as a local path"


def _config(data_dir, task: str):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.data_dir = str(data_dir)
    config.task = task
    config.model.n_layers = 1  # compiles fastest; paths, not the model, are under test here
    config.train.num_epochs = 1
    config.train.batch_size = 240
    return config


def test_the_fake_bucket_is_not_a_local_path(bucket):
    path = storage.as_path(f"{BUCKET}/d/x.txt")
    assert not storage.is_local(path) and not isinstance(path, Path) and str(path) == f"{BUCKET}/d/x.txt"
    storage.write_text(path, "hi")
    assert bucket.files() == [f"{BUCKET}/d/x.txt"] and path.read_text() == "hi"
    with pytest.raises(ValueError, match="staged writes are for local paths"):
        with storage.staged(path):
            pass


def test_bad_inputs_in_a_bucket_are_named(bucket):
    storage.write_bytes(f"{BUCKET}/empty.npy", b"")
    with pytest.raises(LimuBertError, match=rf"^{BUCKET}/empty.npy: is empty"):
        embed.open_windows(f"{BUCKET}/empty.npy")
    with storage.as_path(f"{BUCKET}/w.npz").open("wb") as f:
        np.savez(f, windows=np.zeros((1, 120, 6)))
    with pytest.raises(LimuBertError, match=r"is an \.npz archive \(arrays: windows\)"):
        embed.open_windows(f"{BUCKET}/w.npz")
    with pytest.raises(LimuBertError, match=rf"^{BUCKET}/none.npy: no such file"):
        embed.open_windows(f"{BUCKET}/none.npy")


@pytest.mark.slow
def test_pretrain_embed_and_convert_in_a_bucket(bucket, synthetic_data_dir, capsys):
    workdir = f"{BUCKET}/run"
    config = _config(synthetic_data_dir, "pretrain+embed")
    tasks.run(config, workdir)
    files = bucket.files()
    for name in ("config.json", "model_config.json", "metrics.jsonl", "summary.json", "reconstruction.png",
                 "embed/embeddings.npy", "embed/labels_activity.npy", "embed/summary.json"):
        assert f"{workdir}/{name}" in files, name
    assert any(f.startswith(f"{workdir}/checkpoints/") and "/state/" in f for f in files)
    embeddings = storage.load_npy(f"{workdir}/embed/embeddings.npy")
    assert embeddings.ndim == 3 and embeddings.shape[-1] == config.model.hidden and np.isfinite(embeddings).all()

    # What classify, finetune, baseline and report write besides .json: figures and the table.
    run = runners.run_dir(storage.as_path(workdir), "classify", "limu_gru_v2", config)
    plots.confusion_png(f"{run}/confusion.png", np.eye(2, dtype=int), ["a", "b"])
    plots.tsne_png(f"{run}/tsne.png", np.zeros((2, 2)), np.array([0, 1]), ["a", "b"])
    report.write_report(f"{workdir}/report.md", {"d": {"dcnn": {"accuracy": 0.5, "macro_f1": 0.5}}}, title="t")
    assert {f"{run}/confusion.png", f"{run}/tsne.png", f"{workdir}/report.md"} <= set(bucket.files())

    # A training workdir in the bucket is a checkpoint to every tool: to-torch, from-torch, embed.
    assert convert.main(["to_torch", workdir, f"{BUCKET}/export/model.pt"]) == 0
    assert f"and {BUCKET}/export/model.json" in capsys.readouterr().out
    assert f"{BUCKET}/export/model.json" in bucket.files()
    with pytest.raises(LimuBertError, match="already exists"):
        convert.to_torch(workdir, f"{BUCKET}/export/model.pt")
    layers = dict(n_layers=config.model.n_layers, n_heads=config.model.n_heads)
    convert.from_torch(f"{BUCKET}/export/model.pt", f"{BUCKET}/ckpt", **layers)
    with pytest.raises(LimuBertError, match="already exists"):
        convert.from_torch(f"{BUCKET}/export/model.pt", f"{BUCKET}/ckpt", **layers)
    convert.from_torch(f"{BUCKET}/export/model.pt", f"{BUCKET}/ckpt", overwrite=True, **layers)
    assert checkpoint.read_model_config(f"{BUCKET}/ckpt")[0] == "limu_bert"

    windows = synthetic_windows(8, seed=3)
    storage.save_npy(f"{BUCKET}/x.npy", windows)
    for model in (workdir, f"{BUCKET}/ckpt"):
        out = f"{BUCKET}/e-{model.rsplit('/', 1)[-1]}.npy"
        assert embed.embed_file(model, f"{BUCKET}/x.npy", out, progress=False) == (8, 120, config.model.hidden)
    np.testing.assert_allclose(storage.load_npy(f"{BUCKET}/e-ckpt.npy"), storage.load_npy(f"{BUCKET}/e-run.npy"),
                               rtol=1e-5, atol=1e-5)
    args = [f"--checkpoint={BUCKET}/ckpt", f"--input={BUCKET}/x.npy"]
    assert embed.main([*args, f"--output={BUCKET}/x.npy"]) == 2  # the output may not be the input
    assert embed.main([*args, f"--output={BUCKET}/e-ckpt.npy"]) == 2  # nor replace a file unasked


def test_objects_written_together_are_removed_together(bucket, monkeypatch):
    write_bytes = storage.write_bytes

    def fail_on_sidecar(path, data):
        if str(path).endswith(".json"):
            raise OSError("bucket gone")
        return write_bytes(path, data)

    monkeypatch.setattr(storage, "write_bytes", fail_on_sidecar)
    with pytest.raises(OSError, match="bucket gone"):
        storage.write_together({f"{BUCKET}/m.pt": b"state", f"{BUCKET}/m.json": b"{}"})
    assert bucket.files() == []
