"""``RelDumpParamsHook``: after training, each rank saves what ``test_mim_train_distributed.py``
compares across ranks.

The test starts training through ``mim train`` (separate processes running mmdet's
``tools/train.py``), so it cannot inspect the model itself; the config loads this module with
``custom_imports`` (the test puts this folder on ``PYTHONPATH``).
"""
import os.path as osp

import torch
import torch.distributed as dist
from mmdet.registry import HOOKS
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


@HOOKS.register_module()
class RelDumpParamsHook(Hook):
    """Writes ``WORK_DIR/final_rank{R}.pth``: ``dict(params, buffers, rank, world_size, backend,
    wrapper)`` with the model's final parameters and buffers and how the process group ran."""

    priority = 'LOWEST'

    def after_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        rank, world_size = get_dist_info()
        torch.save(dict(params=dict(model.named_parameters()), buffers=dict(model.named_buffers()),
                        rank=rank, world_size=world_size,
                        backend=dist.get_backend() if dist.is_initialized() else None,
                        wrapper=type(runner.model).__name__),
                   osp.join(runner.work_dir, f'final_rank{rank}.pth'))
