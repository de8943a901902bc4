"""Compiles parts of the model (by default the backbone and the neck) with ``torch.compile`` when a
loop starts.

``RetinaNetHead(compile_cfg=...)`` compiles the head's dense work; this hook compiles what runs
before it. With both, and with batch shapes fixed (``RetinaDataPreprocessor(shape_buckets=...)``),
the whole network runs as compiled graphs, and with ``mode='reduce-overhead'`` as CUDA graphs.
This matters most at small batches, where a GPU otherwise waits while the host launches the
backbone's few hundred small kernels one by one. mmengine's own ``compile`` option compiles only
the training step; this hook covers validation and testing too.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ...utils.compiling import Compiler, check_compile_cfg, compile_forward
from ...utils.errors import RetinaConfigError


@HOOKS.register_module()
class RetinaCompileHook(Hook):
    """Runs the forward of the named submodules through ``torch.compile`` from the first loop on.

    The modules stay what they were: the same parameters (an optimizer built before keeps them),
    state-dict names and checkpoints, forward hooks and ``train()`` / ``eval()``. Each module
    compiles once per input shape and mode (training, evaluation). A module whose compile fails
    runs eager from then on, with one warning.

    Args:
        modules (Sequence[str]): dotted names of submodules of the model (unwrapped from
            DDP), e.g. ``('backbone', 'neck')``.
        compile_cfg (dict, optional): ``torch.compile`` keywords (``backend``, ``mode``,
            ``options``, ``dynamic``, ``fullgraph``; defaults ``fullgraph=True``,
            ``dynamic=False``); None: those defaults.
    """

    priority = 'LOW'  # after hooks that change the weights' layout (channels-last) or copy them

    def __init__(self, modules: Sequence[str] = ('backbone', 'neck'),
                 compile_cfg: Optional[Mapping[str, Any]] = None) -> None:
        if isinstance(modules, str) or not modules or not all(
                isinstance(m, str) and m for m in modules):
            raise RetinaConfigError(f'modules must be a non-empty list of submodule names, got '
                                    f'{modules!r}')
        self.modules = tuple(modules)
        self.compile_cfg = check_compile_cfg(dict(compile_cfg or {}))

    def before_train(self, runner: Runner) -> None:
        self.compile_model(runner.model)

    def before_val(self, runner: Runner) -> None:
        self.compile_model(runner.model)

    def before_test(self, runner: Runner) -> None:
        self.compile_model(runner.model)

    def compile_model(self, model: torch.nn.Module) -> None:
        """Compiles the named submodules of ``model`` (or of the model a DDP wrapper holds);
        those already compiled stay as they are."""
        model = model.module if is_model_wrapper(model) else model
        for name in self.modules:
            try:
                module = model.get_submodule(name)
            except AttributeError as err:
                raise RetinaConfigError(f'modules: the model has no submodule {name!r}') from err
            compile_forward(module, Compiler(self.compile_cfg,
                                             owner=f'RetinaCompileHook ({name})'))
