"""Files in a log directory, opened so that no other local user can redirect them.

In: a log directory path (from the application's worker, the writer, the CLI). Out: a directory file descriptor
checked to be private, and files opened relative to it without following links.

A log directory holds prompts and is written by a process on the user's behalf: if another user could place a
link in it (a directory they own, or one writable by them), the writer would truncate, append to or read files
of the user's through it (issue 25). So a directory is used only when it is owned by this user and writable by
no one else, and every file in it is opened relative to the directory's descriptor with ``O_NOFOLLOW``: a path
swapped for a link between the check and the open is not followed either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeDirectoryError(PermissionError):
    """A log directory another user could place files or links in: never used."""


def check_private(st: os.stat_result, path: str) -> None:
    """Raise ``UnsafeDirectoryError`` unless ``st`` is a directory owned by this user, writable only by it."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectoryError(f"log directory {path!r} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectoryError(
            f"log directory {path!r} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): not used"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectoryError(
            f"log directory {path!r} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): not used"
        )


def make_private_dirs(path: str) -> None:
    """Create ``path`` and any missing parent (0700), then check each directory this call created and
    ``path`` itself: owned by this user and not writable by others, or ``UnsafeDirectoryError``.

    A parent created by someone else first (the race that makes a predictable path dangerous) is caught
    by the same check, since its owner is then not us.
    """
    path = os.path.abspath(path)
    created: list[str] = []
    probe = path
    while not os.path.lexists(probe):
        created.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for directory in reversed(created):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        check_private(os.lstat(directory), directory)
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077 and not st.st_mode & 0o022:
        # Ours and only readable by others: tightened (it holds prompts). Writable by others is refused below:
        # a link may already be planted in it.
        os.chmod(path, 0o700, follow_symlinks=False)
        st = os.lstat(path)
    check_private(st, path)


def open_dir(path: str) -> int:
    """A descriptor of the private directory ``path`` (checked on the descriptor itself, so a directory
    swapped in after the check is not the one used)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        check_private(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def opened_dir(path: str) -> Iterator[int]:
    fd = open_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o600) -> int:
    """Open ``name`` in the directory ``dir_fd``, never through a link; a file that is not a regular file of
    this user's is refused (``PermissionError``)."""
    if "/" in name or name in ("", ".", ".."):
        raise PermissionError(f"not a plain file name: {name!r}")
    try:
        fd = os.open(name, flags | _NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dir_fd)  # NONBLOCK: a FIFO never hangs
    except OSError as exc:
        if exc.errno != errno.ELOOP or not flags & os.O_CREAT:
            raise
        # A link where a file of ours belongs: the link itself is removed (unlink never follows it) and the
        # file made anew, never written through it.
        os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, flags | os.O_EXCL | _NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        # A second hard link would be a file outside the directory (someone else's) reached through it.
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink > 1:
            raise PermissionError(f"{name!r} is not a regular file of this user's: not used")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked); an error (a full disk) raises."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_replace(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to ``name`` atomically (a temporary file renamed over it), relative to ``dir_fd``.
    A partial write (a full disk) leaves the old file and no temporary behind, and raises."""
    tmp = name + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)  # a leftover (or a planted link): removed, never followed
    fd = open_in(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def read_small(dir_fd: int, name: str, limit: int = 1 << 20) -> bytes | None:
    """The bytes of a small file in ``dir_fd`` (at most ``limit``), or None if it is absent or not ours."""
    try:
        fd = open_in(dir_fd, name, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def same_dir(dir_fd: int, path: str) -> bool:
    """Whether ``path`` still names the directory ``dir_fd`` was opened on (not deleted, not replaced)."""
    try:
        now = os.stat(path, follow_symlinks=False)
        held = os.fstat(dir_fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) and held.st_nlink > 0


def open_in_path(path: str, flags: int, mode: int = 0o600) -> int:
    """``open_in`` for a path: its directory checked and opened first."""
    with opened_dir(os.path.dirname(path) or ".") as dir_fd:
        return open_in(dir_fd, os.path.basename(path), flags, mode)
