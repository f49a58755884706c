"""Where a run's outputs live: a local directory or an object-store path (`gs://bucket/dir`).

Paths are `etils.epath.Path`s, so a workdir may be a bucket wherever epath reaches it
(`gs://` needs `gcsfs`, or TensorFlow's GCS file system; `s3://` needs `s3fs`). Object
stores have no appends and no renames, but a written object appears whole: writers that
stage-and-rename or append locally write whole objects there instead (see `is_local`).

Local outputs are written through `staged`: under a hidden name beside the output, renamed
into place when complete, removed on failure; leftovers of killed writers are removed by
the next writer of the same output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator

from etils import epath

from limubert_jax.runtime.errors import LimuBertError


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


# --- staged writes ----------------------------------------------------------------------
#
# Local outputs are written under a hidden staging name beside their final name and renamed
# into place only when complete: a reader never sees half a file, and a failed write leaves
# the previous file (or nothing) under the name. A staging name carries its writer:
#
#     .<name>.tmp-<host>-<pid>-<random><suffix>
#
# so a later writer of the same output can tell a dead writer's leftover (removed) from a
# live one's (kept). <host> is a hash of the host name: on a shared file system, or across
# containers with their own pid namespaces, a pid means nothing on another host.

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _staging_pattern(path: Path) -> re.Pattern:
    return re.compile(re.escape(f".{path.name}.tmp-") + r"([0-9a-f]{8})-(\d+)-[0-9a-f]{8}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is alive (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_staging(path: str | os.PathLike) -> list[Path]:
    """Removes the staging files (or directories) of `path` left by dead processes of this host.

    A process killed by SIGKILL, or by a crash no `finally` survives, leaves its staging
    file behind (embeddings can be gigabytes). Staging files of live processes, of other
    hosts, and files merely resembling the pattern are kept. Returns what was removed.
    """
    path = Path(path)
    pattern = _staging_pattern(path)
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # no parent yet: nothing to clean
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and match.group(1) == _HOST and not pid_alive(int(match.group(2))):
            _remove(entry)
            removed.append(entry)
    return removed


def _umask() -> int:
    # Linux reports the umask without changing it; os.umask() must set it to read it, which
    # briefly changes it for every thread of the process.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def staging_path(path: str | os.PathLike, *, pid: int | None = None, suffix: str = "") -> Path:
    """A fresh staging name for `path`, of process `pid` (default: this one) on this host."""
    path = Path(path)
    pid = os.getpid() if pid is None else pid
    return path.parent / f".{path.name}.tmp-{_HOST}-{pid}-{secrets.token_hex(4)}{suffix}"


def _new_staging(path: Path, suffix: str, directory: bool) -> Path:
    while True:
        tmp = staging_path(path, suffix=suffix)
        try:
            if directory:
                os.mkdir(tmp, 0o700)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def staged(*paths: str | os.PathLike, suffix: str = "", directory: bool = False) -> Iterator[tuple[Path, ...]]:
    """Stages local writes: yields one staging path per target, in order, each beside its target.

        with storage.staged(out_path, json_path) as (out_tmp, json_tmp):
            torch.save(state_dict, out_tmp)
            json_tmp.write_text(text)
        # now both are in place; had the block raised, neither would be

    On entry, stale staging files of the targets are removed (`remove_stale_staging`) and
    each staging file is created empty (a directory when `directory`; `suffix` ends its name,
    for writers that pick a format by extension). The block writes them. When it completes,
    each gets the mode a plain `open()` / `mkdir()` would have given it (0666 / 0777 less
    the umask: the staging file is created private so no one reads it half-written) and is
    renamed onto its target with `os.replace`. On any exception, including KeyboardInterrupt,
    and if a rename fails, the staging files and the targets already renamed in this call
    are removed, so the targets appear together or not at all.

    Replacing is the caller's decision: check `exists()` and refuse before entering. A
    target directory is replaced only after the new one is complete (the old one is moved
    aside under a staging name, then removed). Local paths only: in an object store an
    object appears whole when written, so write it directly.
    """
    # Checked before the conversion: pathlib turns `gs://b/x` into the local `gs:/b/x`.
    for p in paths:
        if not is_local(p):
            raise ValueError(f"staged writes are for local paths, not {os.fspath(p)}")
    targets = [Path(p) for p in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(target)
    staging: list[Path] = []
    placed: list[Path] = []
    try:
        for target in targets:
            staging.append(_new_staging(target, suffix, directory))
        yield tuple(staging)
        mode = (0o777 if directory else 0o666) & ~_umask()
        for tmp in staging:
            os.chmod(tmp, mode)
        for tmp, target in zip(staging, targets):
            aside = None
            if directory and target.is_dir() and not target.is_symlink():
                # os.replace() onto a directory needs it empty: move the old one aside first.
                aside = _new_staging(target, suffix, True)
                staging.append(aside)
                os.replace(target, aside)
            try:
                os.replace(tmp, target)
            except BaseException:
                if aside is not None:
                    os.replace(aside, target)
                raise
            placed.append(target)
    except BaseException:
        for target in placed:
            _remove(target)
        raise
    finally:
        for tmp in staging:
            if os.path.lexists(tmp):
                _remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> epath.Path:
    """Writes a whole file: staged and renamed into place when local (`staged`); in an
    object store, where a written object appears whole, directly. Returns the path."""
    path = as_path(path)
    if not is_local(path):
        path.write_bytes(data)
        return path
    with staged(path) as (tmp,):
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str) -> epath.Path:
    """`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_together(files: dict[str | os.PathLike, bytes]) -> list[epath.Path]:
    """Writes several whole files that belong together (a state dict and its sidecar):
    they appear together or not at all. Local files are `staged` together; objects, which
    cannot be renamed into place, are written in order and the ones already written removed
    when a later one fails (so a reader may see the first before the last appears).
    Returns the paths, in order."""
    items = [(as_path(p), data) for p, data in files.items()]
    if all(is_local(p) for p, _ in items):
        with staged(*(p for p, _ in items)) as tmps:
            for tmp, (_, data) in zip(tmps, items):
                tmp.write_bytes(data)
        return [p for p, _ in items]
    written = []
    try:
        for path, data in items:
            write_bytes(path, data)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def load_npy(path: str | os.PathLike, *, mmap_mode: str | None = None):
    """`numpy.load(path, mmap_mode=..., allow_pickle=False)` of a local file or an object.

    Only a local file can be memory-mapped: an object is read whole into memory through
    `open` (`mmap_mode` then does nothing). An `.npz` comes back as numpy's lazy NpzFile
    either way (an object's is read into memory first, its arrays being read on access).
    """
    import numpy as np  # noqa: PLC0415

    path = as_path(path)
    if is_local(path):
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    with path.open("rb") as f:
        loaded = np.load(f, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded
    return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)


def save_npy(path: str | os.PathLike, array) -> epath.Path:
    """`numpy.save` of `array` to `path` (which keeps its name), staged like `write_bytes`."""
    import numpy as np  # noqa: PLC0415  (storage itself needs no numpy)

    path = as_path(path)
    if not is_local(path):
        with path.open("wb") as f:
            np.save(f, array, allow_pickle=False)
        return path
    with staged(path) as (tmp,), open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return path


def reserve(path: str | os.PathLike, nbytes: int, *, what: str | None = None) -> None:
    """Allocates `nbytes` of disk for the file at `path` now, so writing it cannot run out.

    A memory-mapped output is a sparse file: a full disk shows up only as SIGBUS ("Bus
    error") at the page that cannot be stored. Reserving first turns that into this
    function's `LimuBertError`, naming `what` (default `path`) and the bytes needed.
    File systems without preallocation (or platforms without `posix_fallocate`) skip it;
    copy-on-write ones (btrfs, ZFS) accept it without guaranteeing later writes.
    """
    if not hasattr(os, "posix_fallocate") or nbytes <= 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return
        where = what if what is not None else path
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LimuBertError(
                f"{where}: not enough disk space ({nbytes:,} bytes needed in {Path(path).parent})"
            ) from None
        raise LimuBertError(f"{where}: cannot reserve {nbytes:,} bytes ({os.strerror(e.errno)})") from None
    finally:
        os.close(fd)


def check_not_input(output: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Raises `LimuBertError` if `output` is one of `inputs`: the same path once resolved
    (symlinks, `..`), or the same file under another name (a hard link, a bind mount)."""
    if not is_local(output):
        # Objects have no links: the same object is the same URI (epath normalizes it).
        for source in inputs:
            if not is_local(source) and str(as_path(output)) == str(as_path(source)):
                raise LimuBertError(f"{output}: is also an input ({source}); writing it would destroy the input")
        return
    output = Path(output)
    for source in inputs:
        if not is_local(source):
            continue
        same = output.resolve() == Path(source).resolve()
        if not same and output.exists() and Path(source).exists():
            same = os.path.samefile(output, source)
        if same:
            raise LimuBertError(f"{output}: is also an input ({source}); writing it would destroy the input")


def check_output_file(output: str | os.PathLike, *inputs: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raises `LimuBertError` unless a command may write the file `output`: never one of its
    `inputs` (`check_not_input`), never a directory, and an existing file only with
    `overwrite`. Returns `output` as a path."""
    check_not_input(output, *inputs)
    output = as_path(output)
    if output.is_dir():
        raise LimuBertError(f"{output}: is a directory; name the file to write")
    if output.exists() and not overwrite:
        raise LimuBertError(f"{output}: already exists (pass --overwrite to replace it)")
    return output
