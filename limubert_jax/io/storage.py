"""Where a run's outputs live: a local directory or an object-store path (`gs://bucket/dir`).

Paths are `etils.epath.Path`s, so a workdir may be a bucket wherever epath reaches it
(`gs://` needs `gcsfs`, or TensorFlow's GCS file system; `s3://` needs `s3fs`). Object
stores have no appends and no renames, but a written object appears whole: writers that
stage-and-rename or append locally write whole objects there instead (see `is_local`).

Local outputs are written through `staged`: under a hidden name beside the output, renamed
into place when complete (without replacing a file that appeared meanwhile, unless the
command was told to overwrite), removed on failure; leftovers of killed writers are removed
by the next writer of the same output. `check_output_file` keeps outputs out of inputs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
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

from limubert_jax.runtime.errors import LimuBertError, destination_error


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


# renameat2(2)'s flag: fail with EEXIST instead of replacing the target (Linux 3.15+, glibc 2.28+).
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2():
    """libc's renameat2, or None where the C library lacks it."""
    import ctypes  # noqa: PLC0415  (needed only by writes that must not replace)

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD = -100  # paths relative to the working directory, as rename() takes them


def _move_no_replace(tmp: Path, target: Path, directory: bool) -> None:
    """Moves `tmp` to `target` unless `target` exists, atomically: FileExistsError if it does.

    A check followed by a rename would let a writer that appears between the two lose its
    file; renameat2(RENAME_NOREPLACE) decides in the kernel. Where it is missing (old
    kernels, some file systems), a file is linked under its target name (link() never
    replaces either) and its staging name unlinked; a directory is renamed, which fails on a
    non-empty target and replaces only an empty one, holding nothing to lose.
    """
    renameat2 = _renameat2()
    if renameat2 is not None:
        import ctypes  # noqa: PLC0415

        if renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(target))
    if directory:
        try:
            os.rename(tmp, target)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
            raise
        return
    try:
        os.link(tmp, target)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # Neither renameat2 nor hard links here: the last resort leaves a window between the
        # check and the rename.
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.rename(tmp, target)
        return
    os.unlink(tmp)


def _appeared(target: Path) -> LimuBertError:
    return LimuBertError(f"{target}: appeared while this command ran; pass --overwrite to replace it")


def _empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _output_named_by(error: BaseException, targets: list[Path]) -> Path | None:
    """The output a failed staged write was writing, to name in its error line: the one
    whose staging name (or folder) the error names, else the only one, else their folder (a
    failed write() names no file at all). None when the error names a file of its own that
    is not an output's (an input the block read): the line then names that file."""
    link = error
    while link is not None:
        named = getattr(link, "filename", None)
        if named is not None:
            named = Path(os.fspath(named))
            for target in targets:
                staging = f".{target.name}.tmp-"
                if named == target or any(part.startswith(staging) for part in named.parts):
                    return target
            if not any(named in target.parents for target in targets):
                return None
            break
        link = link.__cause__ or link.__context__
    return targets[0] if len(targets) == 1 else targets[0].parent


@contextlib.contextmanager
def staged(*paths: str | os.PathLike, suffix: str = "", directory: bool = False,
           replace: bool = True) -> Iterator[tuple[Path, ...]]:
    """Stages local writes: yields one staging path per target, in order, each beside its target.

        with storage.staged(out_path, json_path, replace=overwrite) as (out_tmp, json_tmp):
            torch.save(state_dict, out_tmp)
            json_tmp.write_text(text)
        # now both are in place; had the block raised, neither would be

    On entry, stale staging files of the targets are removed (`remove_stale_staging`) and
    each staging file is created empty (a directory when `directory`; `suffix` ends its name,
    for writers that pick a format by extension). The block writes them. When it completes,
    each gets the mode a plain `open()` / `mkdir()` would have given it (0666 / 0777 less
    the umask: the staging file is created private so no one reads it half-written) and is
    renamed onto its target. On any exception, including KeyboardInterrupt, and if a rename
    fails, the staging files and the targets already renamed in this call are removed, so
    the targets appear together or not at all.

    `replace`: whether an existing target is replaced. Without it an existing target is a
    `LimuBertError` on entry, and one that appears while the block runs (another command
    writing the same output) is one at the rename, which never replaces it: of two racing
    writers one wins whole and the other fails naming the file. An empty directory counts
    as absent. Commands pass their `--overwrite`; files a job rewrites (a run's records)
    keep the default. A target directory is replaced only after the new one is complete
    (the old one is moved aside under a staging name, then removed).

    A destination error (full disk, read-only, no permission) is a `LimuBertError` naming
    the target (`errors.destination_error`), not its staging name. Local paths only: in an object store an
    object appears whole when written, so write it directly.
    """
    # Checked before the conversion: pathlib turns `gs://b/x` into the local `gs:/b/x`.
    for p in paths:
        if not is_local(p):
            raise ValueError(f"staged writes are for local paths, not {os.fspath(p)}")
    targets = [Path(p) for p in paths]
    if not replace:
        for target in targets:
            if os.path.lexists(target) and not (directory and _empty_dir(target)):
                raise LimuBertError(f"{target}: already exists (pass --overwrite to replace it)")
    staging: list[Path] = []
    placed: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(target)
        for target in targets:
            staging.append(_new_staging(target, suffix, directory))
        yield tuple(staging)
        mode = (0o777 if directory else 0o666) & ~_umask()
        for tmp in staging:
            os.chmod(tmp, mode)
        for tmp, target in zip(staging, targets):
            if not replace:
                if directory and _empty_dir(target):
                    with contextlib.suppress(OSError):  # filled meanwhile: the move below refuses
                        os.rmdir(target)
                try:
                    _move_no_replace(tmp, target, directory)
                except FileExistsError:
                    raise _appeared(target) from None
                placed.append(target)
                continue
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
    except BaseException as e:
        for target in placed:
            _remove(target)
        # A full or read-only destination: one line naming the output, not the hidden staging
        # name or a file a library wrote below it.
        taken = isinstance(e, Exception) and not isinstance(e, LimuBertError)
        line = destination_error(e, where=_output_named_by(e, targets)) if taken else None
        if line is not None:
            raise LimuBertError(line) from None
        raise
    finally:
        for tmp in staging:
            if os.path.lexists(tmp):
                _remove(tmp)


def _check_absent(path: epath.Path, replace: bool) -> None:
    # An object store has no atomic create-if-absent here: checked just before the write,
    # which narrows, not closes, the window a racing writer has.
    if not replace and path.exists():
        raise _appeared(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> epath.Path:
    """Writes a whole file: staged and renamed into place when local (`staged`, whose
    `replace` this takes); in an object store, where a written object appears whole,
    directly. Returns the path."""
    path = as_path(path)
    if not is_local(path):
        _check_absent(path, replace)
        path.write_bytes(data)
        return path
    with staged(path, replace=replace) as (tmp,):
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str, *, replace: bool = True) -> epath.Path:
    """`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"), replace=replace)


def write_together(files: dict[str | os.PathLike, bytes], *, replace: bool = True) -> list[epath.Path]:
    """Writes several whole files that belong together (a state dict and its sidecar):
    they appear together or not at all. Local files are `staged` together (`replace` as
    there); objects, which cannot be renamed into place, are written in order and the ones
    already written removed when a later one fails (so a reader may see the first before
    the last appears). Returns the paths, in order."""
    items = [(as_path(p), data) for p, data in files.items()]
    if all(is_local(p) for p, _ in items):
        with staged(*(p for p, _ in items), replace=replace) as tmps:
            for tmp, (_, data) in zip(tmps, items):
                try:
                    tmp.write_bytes(data)
                except OSError as e:  # a failed write() names no file; `staged` names the output by it
                    e.filename = tmp if e.filename is None else e.filename
                    raise
        return [p for p, _ in items]
    for path, _ in items:
        _check_absent(path, replace)
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


def save_npy(path: str | os.PathLike, array, *, replace: bool = True) -> epath.Path:
    """`numpy.save` of `array` to `path` (which keeps its name), staged like `write_bytes`."""
    import numpy as np  # noqa: PLC0415  (storage itself needs no numpy)

    path = as_path(path)
    if not is_local(path):
        _check_absent(path, replace)
        with path.open("wb") as f:
            np.save(f, array, allow_pickle=False)
        return path
    with staged(path, replace=replace) as (tmp,), open(tmp, "wb") as f:
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
                f"{where}: no space left on the device ({nbytes:,} bytes needed in {Path(path).parent})"
            ) from None
        raise LimuBertError(f"{where}: cannot reserve {nbytes:,} bytes ({os.strerror(e.errno)})") from None
    finally:
        os.close(fd)


# A hard link to an input file can sit anywhere; looking for one walks the input directory,
# and a directory bigger than this is not a model or a recordings folder: it stops there.
_WALK_LIMIT = 20_000


def _uri(path) -> str:
    return str(as_path(path)).rstrip("/")


def _identity(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_within(path: str | os.PathLike, directory: str | os.PathLike) -> bool:
    """Whether `path` (existing or not) is `directory` or lies inside it: local paths resolved
    (symlinks, `..`, bind mounts), object-store paths by their normalized URIs."""
    if is_local(path) != is_local(directory):
        return False
    if not is_local(path):
        inside, home = _uri(path), _uri(directory)
        return inside == home or inside.startswith(home + "/")
    return _within(Path(path).expanduser(), Path(directory).expanduser())


def _within(path: Path, directory: Path) -> bool:
    """Whether `path` (existing or not) is `directory` or inside it: by resolved names, then
    by the identity of `path`'s existing ancestors (a bind mount of `directory` elsewhere)."""
    resolved, home = path.resolve(), directory.resolve()
    if resolved == home or resolved.is_relative_to(home):
        return True
    target = _identity(home)
    if target is None or not home.is_dir():
        return False
    return any(_identity(a) == target for a in (resolved, *resolved.parents) if os.path.lexists(a))


def _linked_into(output: Path, directory: Path) -> bool:
    """Whether the existing file `output` is also a file under `directory` by a hard link."""
    try:
        st = os.stat(output)
    except OSError:
        return False
    if st.st_nlink < 2 or not os.path.isfile(output):
        return False
    seen, pending = 0, [directory]
    while pending and seen < _WALK_LIMIT:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        other = entry.stat(follow_symlinks=False)
                        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                            return True
        except OSError:
            continue
    return False


def check_not_input(output: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Raises `LimuBertError` if writing `output` could destroy one of `inputs` (files or
    directories: a recordings folder, a checkpoint, a run): `output` is an input, lies
    inside an input directory, holds an input (a directory output replaced whole), or is
    an input file under another name (a symlink, a hard link, a bind mount). Paths are
    compared resolved, so `..` and symlinked folders do not hide an input; an object-store
    path is compared with object-store inputs by its normalized URI and prefix."""
    if not is_local(output):
        out = _uri(output)
        for source in inputs:
            if is_local(source):
                continue
            src = _uri(source)
            if out == src:
                raise LimuBertError(_destroys(output, f"is also an input ({source})"))
            if out.startswith(src + "/"):
                raise LimuBertError(_destroys(output, f"is inside the input {source}"))
            if src.startswith(out + "/"):
                raise LimuBertError(_destroys(output, f"holds the input {source}"))
        return
    output = Path(output)
    for source in inputs:
        if not is_local(source):
            continue
        source = Path(source)
        same = output.resolve() == source.resolve()
        if not same and output.exists() and source.exists():
            same = os.path.samefile(output, source)
        if same:
            raise LimuBertError(_destroys(output, f"is also an input ({source})"))
        if source.is_dir() and _within(output, source):
            raise LimuBertError(_destroys(output, f"is inside the input {source}"))
        if source.is_dir() and _linked_into(output, source):
            raise LimuBertError(_destroys(output, f"is a hard link to a file of the input {source}"))
        if _within(source, output):
            raise LimuBertError(_destroys(output, f"holds the input {source}"))


def _destroys(output, relation: str) -> str:
    return f"{output}: {relation}; writing it could destroy the input (write it elsewhere)"


def check_output_file(output: str | os.PathLike, *inputs: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raises `LimuBertError` unless a command may write the file `output`: never one of its
    `inputs` nor inside an input directory (`check_not_input`: `overwrite` or not), never
    a directory, and an existing file only with `overwrite`. Returns `output` as a path.
    The final rename checks again (`staged(replace=overwrite)`): the output may appear
    while the command runs."""
    check_not_input(output, *inputs)
    output = as_path(output)
    if output.is_dir():
        raise LimuBertError(f"{output}: is a directory; name the file to write")
    if output.exists() and not overwrite:
        raise LimuBertError(f"{output}: already exists (pass --overwrite to replace it)")
    return output
