"""Writing the files the rig leaves behind (reports, timelines, database entries) so
that nothing else is ever touched and nothing half-written stays.

A file is first written whole to a new temp file beside its final name: a random
name opened with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so a symbolic link, a FIFO or
any file planted at a guessable name is never opened, written or followed. It
is flushed to disk (a full disk shows up here, not later) and only then renamed
over the final name, or linked to it when that name must not exist yet. Any
failure removes the temp file. A rename replaces the name, never what a link
there points to.

Standard library only: the database and the report both use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Final

_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: temp names tried before giving up (each is new and random: a clash means a race)
_TRIES: Final = 16


def reason(e: OSError) -> str:
    """An OSError as a few words without its errno prefix or temp file name."""
    return e.strerror or str(e)


def check_target(name: str, dir_fd: int | None = None) -> None:
    """Refuse to replace anything at ``name`` but a regular file (a link, a FIFO, a
    device, a folder): OSError saying so."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{name} exists and is not a regular file; refusing to replace it")


def publish(data: bytes, name: str, *, dir_fd: int, replace: bool = True) -> bool:
    """Write ``data`` as file ``name`` of the folder open as ``dir_fd``.

    ``replace``: rename over ``name`` (whatever is there is replaced, a link itself,
    never its target). Otherwise link it in only if ``name`` does not exist; False
    when it did (nothing written). Raises OSError; the temp file never survives it.
    """
    tmp, fd = _create_temp(name, dir_fd)
    renamed = False
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            renamed = True
            return True
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        return True
    finally:
        if not renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` as a whole (see the module docstring), replacing only
    a regular file; the folder is the caller's, links included. Raises OSError, whose
    message says why without naming the temp file."""
    p = Path(path)
    parent = str(p.parent) if str(p.parent) else "."
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _plain(e, f"{parent}: ") from None
    try:
        check_target(p.name, dir_fd)
        publish(data, p.name, dir_fd=dir_fd, replace=True)
    except OSError as e:
        raise _plain(e) from None
    finally:
        os.close(dir_fd)


def _plain(e: OSError, prefix: str = "") -> OSError:
    """The same error, its message without the temp file's name."""
    text = prefix + reason(e)
    return OSError(e.errno, text) if e.errno is not None else OSError(text)


def _create_temp(name: str, dir_fd: int) -> tuple[str, int]:
    """A new file ``.<name>.<random>.tmp`` opened for writing: never an existing one."""
    stem = os.fsdecode(os.fsencode(name)[:200])  # the random part must fit in 255 bytes
    for _ in range(_TRIES):
        tmp = f".{stem}.{secrets.token_hex(6)}.tmp"
        try:
            return tmp, os.open(tmp, _FLAGS, 0o666, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temp file for {name}: every name tried exists")
