"""Race-free file access inside a worktree whose content the model controls.

The model's bash tool runs while the daemon reads and writes the same tree, so any path may
be a symlink, a FIFO, a device node or a huge file, and a folder may be swapped for a symlink
between a check and an open. Nothing here checks a path and then opens it by name: every
access walks the path one component at a time from a directory fd of the worktree, with
``O_NOFOLLOW`` (``O_DIRECTORY`` for the folders on the way), so the kernel refuses a symlink
at the moment of the open. The last component is opened with ``O_NONBLOCK`` (a FIFO cannot
block the daemon) and checked with ``fstat`` on the open fd: only regular files and folders
are used. Reads and writes are bounded.

Rules, whatever the caller: no NUL byte, no ``..`` above the worktree, an absolute path only
under the worktree, no symlink anywhere on the way (not even one pointing inside: following
it is exactly the race), and no write into ``.git`` (any casing: macOS folds case).

``O_NOFOLLOW``, ``O_DIRECTORY``, ``O_NONBLOCK`` and the ``dir_fd`` calls exist on Linux and
macOS alike. A device node is refused by ``lstat`` before the open and by ``fstat`` after it;
in between, only a process that may ``mknod`` could swap one in, which the sandbox forbids.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

from buildrunnerd.errors import WorkspaceError

__all__ = [
    "PathProblem",
    "WorktreePathError",
    "list_tree",
    "lstat_in",
    "open_directory_in",
    "read_bytes_in",
    "worktree_relpath",
    "write_bytes_in",
]

PathProblem = Literal[
    "invalid",  # empty, or a NUL byte
    "outside",  # an absolute path outside the worktree
    "climbs",  # '..' above the worktree
    "symlink",  # a symlink on the way or at the end
    "missing",  # does not exist
    "not_regular",  # a FIFO, socket or device node
    "is_directory",  # a folder where a file is needed
    "not_directory",  # a file where a folder is needed (on the way)
    "too_large",  # over the byte limit
    "read_only",  # inside .git
    "exists",  # create-only, and the file is there
    "hardlink",  # a write into a file with other names
    "io",  # any other OS error (permissions, a full disk)
]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
# O_NONBLOCK: opening a FIFO never waits for a writer (or, writing, for a reader).
_LEAF_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | _O_NOCTTY | _O_CLOEXEC
_CHUNK_BYTES = 1 << 20
_MAX_DIR_ENTRIES = 10_000  # entries read from one folder by a listing; the rest are counted


class WorktreePathError(WorkspaceError):
    """A path in a worktree was refused or cannot be used. ``problem`` says why (a
    :data:`PathProblem`), ``path`` is the path as the caller gave it; the message says what
    and what to do instead. The agent turns it into feedback for the model; the daemon's own
    readers (prompt context, verification) treat it as "not a usable file"."""

    def __init__(self, message: str, *, problem: PathProblem, path: str) -> None:
        super().__init__(message, data={"path": path, "problem": problem})
        self.problem: PathProblem = problem
        self.path = path


def worktree_relpath(root: Path, raw: str) -> PurePosixPath:
    """The worktree-relative form of ``raw`` (``PurePosixPath(".")`` for the root itself).

    Lexical only; the walk refuses symlinks. ``raw`` may be relative to ``root`` or absolute
    under it (either as given or as resolved). Raises :class:`WorktreePathError`."""
    if not raw or "\x00" in raw:
        raise WorktreePathError(
            "The path is empty or contains a NUL byte; give a path in the repository.",
            problem="invalid", path=raw)
    if raw.startswith("/"):
        norm = posixpath.normpath(raw)
        for base in dict.fromkeys((os.path.normpath(root), os.path.realpath(root))):
            if norm == base:
                return PurePosixPath(".")
            if norm.startswith(base.rstrip("/") + "/"):
                return PurePosixPath(norm[len(base.rstrip("/")) + 1:])
        raise WorktreePathError(
            f"The path {raw} is outside the repository. Use a path relative to the "
            f"repository root or an absolute path under {root}.", problem="outside", path=raw)
    rel = posixpath.normpath(raw)
    if rel == ".." or rel.startswith("../"):
        raise WorktreePathError(
            f"The path {raw} climbs out of the repository with '..'; refused.",
            problem="climbs", path=raw)
    return PurePosixPath(rel)


@contextmanager
def _root_fd(root: Path) -> Iterator[int]:
    # The root itself is the daemon's own path (its state folder), so it may be followed.
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:
        raise WorktreePathError(f"cannot open the worktree {root}: {exc.strerror}",
                                problem="io", path=str(root)) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _symlink_error(dir_fd: int, name: str, where: str, raw: str) -> WorktreePathError:
    try:
        target = os.readlink(name, dir_fd=dir_fd)
    except OSError:
        target = "?"
    return WorktreePathError(
        f"The path {raw} goes through a symlink ({where} -> {target}); symlinks are not "
        "followed, refused. Use the real path inside the repository.",
        problem="symlink", path=raw)


def _lstat(dir_fd: int, name: str, where: str, raw: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError as exc:
        raise WorktreePathError(f"The file {raw} does not exist.", problem="missing",
                                path=raw) from exc
    except OSError as exc:
        raise _os_error(exc, where, raw) from exc


def _os_error(exc: OSError, where: str, raw: str) -> WorktreePathError:
    if exc.errno == errno.ENOENT:
        return WorktreePathError(f"The file {raw} does not exist.", problem="missing", path=raw)
    if exc.errno == errno.ENOTDIR:
        return WorktreePathError(f"{where} (in {raw}) is not a directory.",
                                 problem="not_directory", path=raw)
    return WorktreePathError(f"cannot use {raw}: {exc.strerror or exc}", problem="io",
                             path=raw)


def _kind_error(st: os.stat_result, dir_fd: int, name: str, where: str,
                raw: str) -> WorktreePathError | None:
    """The error for a leaf that is not a regular file (None when it is one)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return _symlink_error(dir_fd, name, where, raw)
    if stat.S_ISDIR(mode):
        return WorktreePathError(f"{raw} is a directory; this command needs a file.",
                                 problem="is_directory", path=raw)
    what = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    return WorktreePathError(
        f"{raw} is {what}, not a regular file; only regular files and directories are used.",
        problem="not_regular", path=raw)


def _open_subdir(dir_fd: int, name: str, where: str, raw: str, *, create: bool) -> int:
    for attempt in (1, 2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            if not create or attempt == 2:
                raise WorktreePathError(
                    f"The file {raw} does not exist ({where} is missing).",
                    problem="missing", path=raw) from exc
            try:
                os.mkdir(name, 0o755, dir_fd=dir_fd)
            except FileExistsError:
                pass  # created meanwhile; the next open checks what it is
            except OSError as mkdir_exc:
                raise _os_error(mkdir_exc, where, raw) from mkdir_exc
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EMLINK):
                # Linux answers ENOTDIR for a symlink under O_DIRECTORY|O_NOFOLLOW: look.
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    raise _os_error(exc, where, raw) from exc
                if stat.S_ISLNK(st.st_mode):
                    raise _symlink_error(dir_fd, name, where, raw) from exc
                raise WorktreePathError(f"{where} (in {raw}) is not a directory.",
                                        problem="not_directory", path=raw) from exc
            raise _os_error(exc, where, raw) from exc
    raise AssertionError("unreachable")


def _open_dirs(root_fd: int, parts: tuple[str, ...], raw: str, *, create: bool) -> int:
    """A new fd of the folder ``parts`` below ``root_fd``, no symlink followed on the way
    (missing folders made, one at a time, when ``create``)."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            sub = _open_subdir(fd, name, "/".join(parts[: i + 1]), raw, create=create)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse_git(rel: PurePosixPath, raw: str) -> None:
    if any(part.casefold() == ".git" for part in rel.parts):
        raise WorktreePathError(
            f"{raw} is inside .git, which is read-only (BuildRunner commits for you).",
            problem="read_only", path=raw)


def _too_large(raw: str, size_bytes: int, max_bytes: int, what: str) -> WorktreePathError:
    return WorktreePathError(
        f"{raw}: {what} is {size_bytes:,} bytes, over the limit of {max_bytes:,} bytes; "
        "refused.", problem="too_large", path=raw)


def lstat_in(root: Path, raw: str) -> os.stat_result:
    """``lstat`` of ``raw`` in the worktree, with no symlink followed on the way (the last
    component is not followed either: a symlink's own status comes back). Raises
    :class:`WorktreePathError` (``missing``, ``symlink`` on the way, ...)."""
    rel = worktree_relpath(root, raw)
    with _root_fd(root) as rfd:
        if not rel.parts:
            return os.fstat(rfd)
        dfd = _open_dirs(rfd, rel.parts[:-1], raw, create=False)
        try:
            return _lstat(dfd, rel.parts[-1], rel.as_posix(), raw)
        finally:
            os.close(dfd)


def open_directory_in(root: Path, raw: str) -> int:
    """A new fd (``O_DIRECTORY``, close-on-exec; the caller closes it) of the folder ``raw``
    in the worktree, no symlink followed on the way or at the end; for ``os.fwalk(dir_fd=)``
    and ``os.scandir``. Raises :class:`WorktreePathError`."""
    rel = worktree_relpath(root, raw)
    with _root_fd(root) as rfd:
        return _open_dirs(rfd, rel.parts, raw, create=False)


def read_bytes_in(root: Path, raw: str, *, max_bytes: int) -> bytes:
    """The content of the regular file ``raw`` in the worktree, at most ``max_bytes`` bytes.

    Raises :class:`WorktreePathError` for a symlink anywhere, a FIFO, device or socket, a
    directory, a missing file, and a file over ``max_bytes`` (``too_large``: the message
    names its size and the limit; nothing over the limit is read into memory)."""
    rel = worktree_relpath(root, raw)
    if not rel.parts:
        raise WorktreePathError(f"{raw} is a directory; this command needs a file.",
                                problem="is_directory", path=raw)
    with _root_fd(root) as rfd:
        dfd = _open_dirs(rfd, rel.parts[:-1], raw, create=False)
        try:
            fd = _open_leaf(dfd, rel.parts[-1], rel.as_posix(), raw, os.O_RDONLY)
        finally:
            os.close(dfd)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise _too_large(raw, size, max_bytes, "the file")
        data = bytearray()
        while len(data) <= max_bytes:
            chunk = os.read(fd, min(_CHUNK_BYTES, max_bytes + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) > max_bytes:  # it grew after the fstat
            raise _too_large(raw, len(data), max_bytes, "the file (still growing)")
        return bytes(data)
    except OSError as exc:
        raise _os_error(exc, rel.as_posix(), raw) from exc
    finally:
        os.close(fd)


def _open_leaf(dir_fd: int, name: str, where: str, raw: str, flags: int) -> int:
    """Open an existing leaf that must be a regular file: lstat, open (no follow, no
    blocking), then fstat the fd and check it is the file that was looked at."""
    before = _lstat(dir_fd, name, where, raw)
    problem = _kind_error(before, dir_fd, name, where, raw)
    if problem is not None:
        raise problem
    try:
        fd = os.open(name, flags | _LEAF_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise _symlink_error(dir_fd, name, where, raw) from exc
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, swapped in
            raise WorktreePathError(f"{raw} is a FIFO, not a regular file; refused.",
                                    problem="not_regular", path=raw) from exc
        raise _os_error(exc, where, raw) from exc
    try:
        after = os.fstat(fd)
        problem = _kind_error(after, dir_fd, name, where, raw)
        if problem is None and (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            problem = WorktreePathError(f"{raw} was replaced while being opened; try again.",
                                        problem="io", path=raw)
    except BaseException:
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
        raise problem
    return fd


def write_bytes_in(root: Path, raw: str, data: bytes, *, max_bytes: int,
                   create_only: bool = False) -> bool:
    """Write ``data`` to ``raw`` in the worktree; True when the file was created.

    Missing folders are made one at a time (no symlink followed); a new file is created with
    ``O_EXCL`` and mode 0o644; an existing one must be a regular file with no other hard
    link, and is truncated and written in place (its mode is kept). Raises
    :class:`WorktreePathError`: ``.git``, a symlink, a FIFO or device, a directory,
    ``create_only`` and the file exists, ``data`` over ``max_bytes``."""
    rel = worktree_relpath(root, raw)
    if not rel.parts:
        raise WorktreePathError(f"{raw} is a directory; give a file path.",
                                problem="is_directory", path=raw)
    _refuse_git(rel, raw)
    if len(data) > max_bytes:
        raise _too_large(raw, len(data), max_bytes, "the new content")
    name, where = rel.parts[-1], rel.as_posix()
    with _root_fd(root) as rfd:
        dfd = _open_dirs(rfd, rel.parts[:-1], raw, create=True)
        try:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _LEAF_FLAGS, 0o644,
                             dir_fd=dfd)
                created = True
            except FileExistsError:
                if create_only:
                    raise WorktreePathError(f"{raw} already exists.", problem="exists",
                                            path=raw) from None
                fd = _open_leaf(dfd, name, where, raw, os.O_WRONLY)
                created = False
            except OSError as exc:
                raise _os_error(exc, where, raw) from exc
        finally:
            os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WorktreePathError(f"{raw} is not a regular file; refused.",
                                    problem="not_regular", path=raw)
        if not created and st.st_nlink > 1:
            raise WorktreePathError(
                f"{raw} has {st.st_nlink} hard links; writing it would change the other "
                "names too. Delete it and create it again.", problem="hardlink", path=raw)
        if not created:
            os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise _os_error(exc, where, raw) from exc
    finally:
        os.close(fd)
    return created


def list_tree(root: Path, raw: str, *, depth: int = 2, max_entries: int = 400,
              include_hidden: bool = False) -> tuple[list[str], int]:
    """The entries under the folder ``raw``, ``depth`` levels deep, sorted, as paths relative
    to it (``name/`` for a folder, ``name -> target`` for a symlink, never followed).

    Returns (entries, omitted): at most ``max_entries`` entries, and how many more there
    were (a folder with more than 10,000 entries is read that far). Hidden names (a leading
    dot) are skipped unless ``include_hidden``."""
    rel = worktree_relpath(root, raw)
    with _root_fd(root) as rfd:
        fd = _open_dirs(rfd, rel.parts, raw, create=False)
    entries: list[str] = []
    omitted = 0

    def walk(dir_fd: int, prefix: str, level: int) -> None:
        nonlocal omitted
        children: list[tuple[str, bool, bool]] = []  # (name, is_dir, is_symlink)
        more = 0
        try:
            with os.scandir(dir_fd) as it:
                for entry in it:
                    if entry.name.startswith(".") and not include_hidden:
                        continue
                    if len(children) >= _MAX_DIR_ENTRIES:
                        more += 1
                        continue
                    children.append((entry.name, entry.is_dir(follow_symlinks=False),
                                     entry.is_symlink()))
        except OSError:
            return
        omitted += more
        for name, is_dir, is_link in sorted(children):
            if len(entries) >= max_entries:
                omitted += 1
                continue
            if is_link:
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except OSError:
                    target = "?"
                entries.append(f"{prefix}{name} -> {target}")
            elif is_dir:
                entries.append(f"{prefix}{name}/")
                if level < depth:
                    try:
                        sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                    except OSError:
                        continue  # swapped for a symlink or removed meanwhile: not followed
                    try:
                        walk(sub, f"{prefix}{name}/", level + 1)
                    finally:
                        os.close(sub)
            else:
                entries.append(f"{prefix}{name}")

    try:
        walk(fd, "", 1)
    finally:
        os.close(fd)
    return entries, omitted
