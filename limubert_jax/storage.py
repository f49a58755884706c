"""Where a run's outputs live: a local directory or an object-store path (`gs://bucket/dir`).

Paths are `etils.epath.Path`s, so a workdir may be a bucket wherever epath reaches it
(`gs://` needs `gcsfs`, or TensorFlow's GCS file system; `s3://` needs `s3fs`). Object
stores have no appends and no renames, but a written object appears whole: writers that
stage-and-rename or append locally write whole objects there instead (see `is_local`).
"""

from __future__ import annotations

import os

from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path; a local path stays as given (relative stays relative)."""
    return epath.Path(path)


def is_local(path: str | os.PathLike) -> bool:
    """True for a path on a local file system, False for a URI such as `gs://bucket/dir`."""
    return "://" not in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """`path` made absolute when local (Orbax requires absolute local paths); a URI is
    absolute already, and `Path.absolute()` would prefix it with the current directory."""
    path = as_path(path)
    return path.absolute() if is_local(path) else path
