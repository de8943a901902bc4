"""Puts the model's weights in channels-last (NHWC) memory layout before training and testing.

cuDNN's fast convolution kernels (tensor cores, fp16/bf16) work in NHWC; given NCHW weights and
activations it converts the layout before and after every convolution (its share of a training
step's GPU time: ``docs/benchmarks.md``, H200). With NHWC weights and an NHWC input batch
(``RetinaDataPreprocessor(train_channels_last=True)``) every convolution, norm, activation and
addition of the network keeps NHWC and no conversion is left. Only the layout changes: shapes,
indexing, state-dict names and values are the same, and checkpoints load into either layout.
"""
from __future__ import annotations

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner


@HOOKS.register_module()
class RetinaChannelsLastHook(Hook):
    """Converts the model's 4-D weights to ``torch.channels_last`` when a loop starts.

    Runs at ``before_train``, ``before_val`` and ``before_test``, after the runner has loaded
    the initial weights or the checkpoint (those copy into the tensors and keep their layout);
    converting an already channels-last model changes nothing. The parameters stay the same
    objects, so the optimizer built before keeps updating them.

    Under ``DistributedDataParallel``, which lays out its gradient buckets when the runner wraps
    the model (before any hook runs), each NHWC gradient is copied into its NCHW bucket view
    (PyTorch warns once): correct, one copy per parameter and step.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner: Runner) -> None:
        self._convert(runner)

    def before_val(self, runner: Runner) -> None:
        self._convert(runner)

    def before_test(self, runner: Runner) -> None:
        self._convert(runner)

    @staticmethod
    def _convert(runner: Runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.to(memory_format=torch.channels_last)
