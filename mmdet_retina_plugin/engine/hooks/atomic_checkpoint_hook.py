"""Checkpoint hook whose saves survive ``kill -9`` at any point, so auto-resume always works."""
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from mmdet.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from ...utils.errors import RetinaConfigError
from ..atomic_io import atomic_write, remove_stale_temp_files

ATOMIC_BACKEND_ARGS = dict(backend='retina_atomic_local')


@HOOKS.register_module()
class RetinaAtomicCheckpointHook(CheckpointHook):
    """Drop-in :class:`~mmengine.hooks.CheckpointHook` with crash-safe saving.

    ``--resume`` / ``resume=True`` reads ``work_dir/last_checkpoint`` and loads the file it names.
    Stock mmengine 0.10 can leave that pointer dangling or truncated:

    * checkpoint files are written in place, so a kill mid-write leaves a truncated ``.pth``;
    * ``last_checkpoint`` is written in place, so a kill mid-write leaves it empty;
    * with ``max_keep_ckpts`` the oldest checkpoint is deleted *before* the new one is saved,
      so a kill in between leaves ``last_checkpoint`` naming a deleted file and resume fails.

    This hook writes both files atomically (temp file + fsync + ``os.replace``, through the
    ``'retina_atomic_local'`` file backend) and deletes old checkpoints only after the new one
    and the pointer are on disk; at any kill point the pointer names a complete checkpoint.
    Temp files of a killed save are deleted at the next ``before_train``.

    Args:
        interval (int): save period in epochs (``by_epoch=True``) or iterations; ``-1`` disables
            periodic saving.
        by_epoch (bool): whether ``interval`` counts epochs or iterations.
        max_keep_ckpts (int): number of periodic checkpoints kept, ``-1`` keeps all, else
            ``>= 1``.
        out_dir (Optional[Union[str, Path]]): checkpoint directory; ``None`` means the runner's
            ``work_dir``.
        backend_args (Optional[Dict[str, Any]]): mmengine file backend arguments; ``None``
            selects the atomic local backend for local ``out_dir`` (remote URIs keep mmengine's
            inferred backend).
        **kwargs (Any): the other :class:`~mmengine.hooks.CheckpointHook` arguments
            (``save_last``, ``save_best``, ``rule``, ``filename_tmpl``, ``save_optimizer``, ...).
    """

    def __init__(self,
                 interval: int = -1,
                 by_epoch: bool = True,
                 max_keep_ckpts: int = -1,
                 out_dir: Optional[Union[str, Path]] = None,
                 backend_args: Optional[Dict[str, Any]] = None,
                 **kwargs: Any) -> None:
        if not isinstance(interval, int) or isinstance(interval, bool) or (
                interval < 1 and interval != -1):
            raise RetinaConfigError(
                f'interval must be an int >= 1 or -1 (disabled), got {interval!r}')
        if not isinstance(max_keep_ckpts, int) or isinstance(max_keep_ckpts, bool) or (
                max_keep_ckpts < 1 and max_keep_ckpts != -1):
            raise RetinaConfigError(
                f'max_keep_ckpts must be an int >= 1 or -1 (keep all), got {max_keep_ckpts!r}')
        if kwargs.get('file_client_args') is not None:
            raise RetinaConfigError('file_client_args is not supported (deprecated in mmengine); '
                                    'pass backend_args instead')
        if backend_args is None and '://' not in str(out_dir or ''):
            backend_args = dict(ATOMIC_BACKEND_ARGS)
        super().__init__(interval=interval, by_epoch=by_epoch, max_keep_ckpts=max_keep_ckpts,
                         out_dir=out_dir, backend_args=backend_args, **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process():
            stale = remove_stale_temp_files(runner.work_dir)
            if self.out_dir != runner.work_dir and '://' not in str(self.out_dir):
                stale += remove_stale_temp_files(self.out_dir)
            if stale:
                runner.logger.warning(
                    f'Removed {len(stale)} temp file(s) of an interrupted save: {stale}')

    def _select_expired_ckpt(self, runner, step: int) -> List[str]:
        """Records ``step`` in ``keep_ckpt_ids`` and returns the paths that fall out of it.

        ``keep_ckpt_ids`` goes into the message hub *before* saving (as in mmengine) so the
        new checkpoint lists itself and a resumed run keeps pruning the same files.
        """
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        expired = []
        while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
            expired.append(self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(self.keep_ckpt_ids.popleft())))
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return expired

    def _save_checkpoint_with_step(self, runner, step: int, meta: Dict[str, Any]) -> None:
        expired = self._select_expired_ckpt(runner, step)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write(str(self.last_ckpt), osp.join(runner.work_dir, 'last_checkpoint'))
        # Only now is it safe to delete: the pointer no longer names any expired file.
        for path in expired:
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)  # deepspeed saves checkpoints as directories
