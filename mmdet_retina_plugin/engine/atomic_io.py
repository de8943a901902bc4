"""Crash-safe file writes: a reader sees either the old file or the complete new one.

Bytes go to a temporary file in the destination's directory, are flushed to disk
(``fsync``), and only then renamed over the destination with :func:`os.replace`, which POSIX
makes atomic within a file system. A process killed at any point (``kill -9``, power loss after
the directory fsync) leaves at worst a stray ``*.retina-tmp`` file, never a truncated target.

:class:`AtomicLocalBackend` plugs this into mmengine's file I/O, which ``Runner.save_checkpoint``
and :class:`~mmengine.hooks.CheckpointHook` write through; it is registered as the file backend
``'retina_atomic_local'`` (select it with ``backend_args=dict(backend='retina_atomic_local')``).
"""
import contextlib
import glob
import os
import os.path as osp
import uuid
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

TMP_SUFFIX = '.retina-tmp'


def _fsync_dir(dirname: str) -> None:
    # The rename itself lives in the directory entry; without this fsync a power loss may undo it.
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. certain network mounts) refuse fsync on directories
    finally:
        os.close(fd)


def atomic_write(data: Union[bytes, str], filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
    """Replaces ``filepath`` with ``data`` atomically, creating parent directories.

    Args:
        data (Union[bytes, str]): file content; ``str`` is encoded with ``encoding``.
        filepath (Union[str, Path]): destination path.
        encoding (str): text encoding used when ``data`` is ``str``.
    """
    filepath = osp.abspath(os.fspath(filepath))
    dirname = osp.dirname(filepath)
    os.makedirs(dirname, exist_ok=True)
    payload = data.encode(encoding) if isinstance(data, str) else data
    # Unique per writer so that two processes saving the same name never share a temp file.
    tmp = osp.join(dirname, f'.{osp.basename(filepath)}.{os.getpid()}.{uuid.uuid4().hex[:8]}'
                            f'{TMP_SUFFIX}')
    try:
        with open(tmp, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(dirname)


def remove_stale_temp_files(dirname: Union[str, Path]) -> List[str]:
    """Deletes temporary files left in ``dirname`` by writers that were killed mid-write.

    Only call this when no other process is writing into ``dirname``.

    Args:
        dirname (Union[str, Path]): directory to clean.

    Returns:
        List[str]: the removed paths.
    """
    removed = []
    for path in glob.glob(osp.join(os.fspath(dirname), f'.*{TMP_SUFFIX}')):
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
    return removed


@register_backend('retina_atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine :class:`~mmengine.fileio.LocalBackend` whose writes are atomic (see module doc)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(obj, filepath, encoding=encoding)
