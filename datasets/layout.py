"""Raw files of the recorded datasets (installed as `limubert_jax.datasets.layout`): the folder
holding a dataset's layout at or below a manual directory (`find_layout`, `best_partial` for
naming what is missing), and zip/tar archives extracted with the standard library
(`extract_archives`; TFDS's own extraction needs TensorFlow). `common.ImuBuilder.raw_dir`
puts them together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from etils import epath


def find_layout(root: epath.Path, required: Sequence[str], max_depth: int = 3) -> epath.Path | None:
    """The directory at or below `root` (breadth first, `max_depth` levels) holding every
    path in `required` (relative paths), or None. Archives often add a top folder or two."""
    level = [epath.Path(root)]
    for _ in range(max_depth + 1):
        next_level = []
        for directory in level:
            if all((directory / rel).exists() for rel in required):
                return directory
            next_level.extend(sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")))
        level = next_level
    return None


def missing(root: epath.Path, required: Sequence[str]) -> list[str]:
    return [rel for rel in required if not (epath.Path(root) / rel).exists()]


def manual_dir_or_none(dl_manager) -> epath.Path | None:
    """The manual directory if it exists and is not empty, else None."""
    try:
        return epath.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS: missing or empty
        return None


def best_partial(manual: epath.Path, required: Sequence[str]) -> epath.Path | None:
    """The directory at or below `manual` holding the most (at least one) of `required`."""
    best, best_count, level = None, 0, [manual]
    for _ in range(4):
        next_level = []
        for directory in level:
            count = len(required) - len(missing(directory, required))
            if count > best_count:
                best, best_count = directory, count
            next_level.extend(p for p in sorted(directory.iterdir()) if p.is_dir())
        level = next_level
    return best


def extract_archives(dl_manager, archives: Sequence[os.PathLike | str]) -> list[epath.Path]:
    """Extracts zip/tar archives into `<download_dir>/extracted/`, one folder per archive.

    With the standard library: TFDS's own `dl_manager.extract` needs TensorFlow, which this
    project does not install. An extraction is staged and renamed into place, so an
    interrupted one is redone, and a finished one is reused.
    """
    root = epath.Path(dl_manager.download_dir) / "extracted"
    return [extract_archive(epath.Path(a), root) for a in archives]


def extract_archive(archive: epath.Path, dest_root: epath.Path) -> epath.Path:
    """`archive` (.zip, .tar, .tar.gz, .tgz) extracted to `dest_root/<archive name>.d`."""
    import shutil  # noqa: PLC0415
    import tarfile  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    archive = epath.Path(archive)
    dest = epath.Path(dest_root) / f"{archive.name}.d"
    if dest.is_dir():
        return dest
    staging = epath.Path(dest_root) / f"{archive.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:  # extractall drops absolute and '..' parts
            z.extractall(staging)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(staging, filter="data")  # no links or paths out of staging
    else:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"{archive} is not a zip or tar archive (a RAR must be extracted by hand)")
    staging.rename(dest)
    return dest


def archives_below(root: epath.Path) -> list[epath.Path]:
    suffixes = (".zip", ".tar", ".tar.gz", ".tgz")
    found = []
    for directory, _, files in sorted(os.walk(os.fspath(root))):
        found.extend(epath.Path(directory) / f for f in sorted(files) if f.endswith(suffixes))
    return found
