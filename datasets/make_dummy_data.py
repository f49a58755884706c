"""Writes every builder's `dummy_data/`: small raw files in the dataset's own layout.

    python -m limubert_jax.datasets.make_dummy_data            # all builders
    python -m limubert_jax.datasets.make_dummy_data hhar wisdm  # some

A builder module that defines `write_dummy_data(root: pathlib.Path) -> None` (deterministic:
same bytes on every run) gets `<name>/dummy_data/` replaced by its output. The files are
generated here, never downloaded; each folder stays under 1 MB (checked by the tests).
"""

from __future__ import annotations

import importlib
import pathlib
import shutil
import sys
import tempfile

import limubert_jax.datasets as imu_datasets

MAX_BYTES = 1 << 20


def writers() -> dict:
    """Builder name -> its module's `write_dummy_data`, for the builders that have one."""
    out = {}
    for name, cls in sorted(imu_datasets.BUILDERS.items()):
        module = importlib.import_module(cls.__module__)
        if hasattr(module, "write_dummy_data"):
            out[name] = module.write_dummy_data
    return out


def folder_bytes(root: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def write(name: str, root: pathlib.Path) -> None:
    """Writes builder `name`'s dummy raw files into `root` (created), checking the size."""
    root.mkdir(parents=True, exist_ok=True)
    writers()[name](root)
    size = folder_bytes(root)
    if size > MAX_BYTES:
        raise ValueError(f"dummy data of {name} is {size} bytes, over {MAX_BYTES}")


def main(argv: list[str]) -> int:
    available = writers()
    names = argv or sorted(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        print(f"no dummy-data writer for {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    for name in names:
        target = pathlib.Path(imu_datasets.BUILDERS[name].pkg_dir_path) / "dummy_data"
        with tempfile.TemporaryDirectory() as tmp:
            staged = pathlib.Path(tmp) / "dummy_data"
            write(name, staged)  # complete before the committed folder is touched
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(staged, target)
        print(f"wrote {target} ({folder_bytes(target)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
