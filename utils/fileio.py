"""Durable file writes: a temp file next to the target, fsync, atomic rename, fsync of the folder.

A crash or power loss at any point leaves either the old file or the new one, never a torn one
(the rename is atomic; the fsyncs make the data and the rename reach the disk, as SQLite and
git do). A full disk, a read-only folder or a forbidden one ends in a `StorageError` naming the
target (the user's path, never the temp file); the previous file stays and no temp file is left behind.
"""
import contextlib
import errno
import json
import os
import tempfile
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)

# errno -> what the user has to fix; other OSErrors (bugs, vanished files) keep their traceback.
_STORAGE_ERRNOS = {errno.ENOSPC: 'no space left on the device', errno.EDQUOT: 'disk quota exceeded',
                   errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied',
                   errno.EPERM: 'operation not permitted', errno.EISDIR: 'it is a folder; name a file',
                   errno.ENOTDIR: 'a parent in its path is a file, not a folder'}


class StorageError(OSError):
    """A write failed for a reason fixed on the machine, not in the code (full disk, read-only, no permission)."""


@contextlib.contextmanager
def storage_errors(path: str) -> Iterator[None]:
    """Within the block, a full disk, a read-only file system or a missing permission become a
    `StorageError` naming `path`; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in _STORAGE_ERRNOS or isinstance(e, StorageError):
            raise
        error = StorageError(f'{path}: cannot write ({_STORAGE_ERRNOS[e.errno]}); '
                             f'the previous file, if any, is unchanged')
        error.errno = e.errno
        raise error from e


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """Yield a temp path in `path`'s folder; once the block has written it, make it `path` durably.

    The writer may open the temp path or replace it (a hard link). On any error the temp file is
    removed and `path` keeps its previous content; storage errors become `StorageError`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        with storage_errors(path):
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
            os.close(fd)
            yield tmp
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
            _fsync(tmp)
            os.replace(tmp, path)
            tmp = None
            if os.name != 'nt':  # the rename is durable only once the folder entry is on disk (no folder fds on Windows)
                _fsync(directory)
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.remove(tmp)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # some network and FUSE file systems cannot fsync a folder
            raise
    finally:
        os.close(fd)


def sync_folder(folder: str) -> None:
    """fsync every file of `folder`, then the folder: what was written there is on disk before a rename
    publishes it (an export built aside, then renamed into place)."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            _fsync(path)
    if os.name != 'nt':  # no folder fds on Windows
        _fsync(folder)


def write_json(path: str, obj) -> None:
    """Write `obj` as indented JSON, atomically and durably."""
    with atomic_write(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write('\n')
