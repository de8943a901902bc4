"""Lets mmengine's ``pytorch`` launcher train on CPU-only hosts (gloo), unchanged where CUDA exists.

``mim train mmdet CONFIG --launcher pytorch --gpus N`` starts N processes of mmdet's
``tools/train.py`` under ``torch.distributed.launch``. On a CPU-only torch, mmengine 0.10.7 stops
there twice:

1. ``mmengine.dist.utils._init_dist_pytorch`` (which ``init_dist`` looks up by that module-global
   name at call time) calls ``torch.cuda.set_device(LOCAL_RANK)``, which raises without CUDA, and
   then initialises the process group with ``env_cfg.dist_cfg.backend``, ``'nccl'`` in mmdet's
   ``default_runtime.py``, a GPU-only backend.
2. ``Runner.wrap_model`` builds ``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``, and
   PyTorch's DDP rejects ``device_ids`` for a module whose parameters are on the CPU.

:func:`install_cpu_distributed` (called by ``import mmdet_retina_plugin``, i.e. by a config's
``custom_imports``, before the Runner exists) wraps both functions. The wrappers only act when
there is no accelerator (mmengine's ``get_device()`` is ``'cpu'``): they skip ``set_device``,
switch ``nccl`` to ``gloo`` with a one-time warning, and wrap the model in
:class:`RetinaDistributedDataParallel`, which drops ``device_ids``/``output_device`` for CPU
modules. With CUDA (or NPU/MLU/MUSA) the original mmengine functions run unchanged, so configs need
nothing CPU-specific.
"""
import functools
import warnings
from typing import Any, Callable, Optional, Union

import mmengine.dist.utils as mmengine_dist_utils
import torch.distributed as torch_dist
from mmengine.device import get_device
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from torch import nn

# Attribute set on our wrapper functions: installing twice must not wrap twice.
_MARK = '_retina_cpu_distributed'
_warned_backend = False


def no_accelerator() -> bool:
    """True when mmengine would run on the CPU (no CUDA, NPU, MLU, MUSA or MPS device)."""
    return get_device() == 'cpu'


def _module_on_cpu(module: nn.Module) -> bool:
    """True when every parameter is on the CPU: the case in which DDP refuses ``device_ids``."""
    devices = {p.device.type for p in module.parameters()}
    return devices == {'cpu'}


@MODEL_WRAPPERS.register_module()
class RetinaDistributedDataParallel(MMDistributedDataParallel):
    """:class:`~mmengine.model.MMDistributedDataParallel` that also accepts CPU modules.

    mmengine's Runner passes ``device_ids=[LOCAL_RANK]`` to every DDP subclass it builds, which
    PyTorch's DDP rejects when the module's parameters are on the CPU (gloo training). For such
    modules this wrapper drops ``device_ids`` and ``output_device`` (DDP then leaves inputs where
    they are); for GPU modules it is exactly ``MMDistributedDataParallel``.

    Registered in mmengine's root ``MODEL_WRAPPERS``, the registry ``Runner.wrap_model`` looks
    names up in, so ``model_wrapper_cfg=dict(type='RetinaDistributedDataParallel', ...)`` works.
    """

    def __init__(self, module: nn.Module, detect_anomalous_params: bool = False,
                 **kwargs: Any) -> None:
        if _module_on_cpu(module):
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module=module, detect_anomalous_params=detect_anomalous_params, **kwargs)


def _warn_nccl_to_gloo() -> None:
    """Warns once per process: the dumped config still says ``nccl``, the log should say why not."""
    global _warned_backend
    if _warned_backend:
        return
    _warned_backend = True
    warnings.warn(
        "mmdet_retina_plugin: dist_cfg backend 'nccl' needs CUDA, which this torch/host lacks; "
        "initialising the process group with 'gloo' instead (CPU-only distributed training).",
        RuntimeWarning, stacklevel=3)


def _wrap_init_dist_pytorch(original: Callable[..., None]) -> Callable[..., None]:
    """``_init_dist_pytorch`` that skips ``cuda.set_device`` and uses gloo on CPU-only hosts."""

    @functools.wraps(original)
    def init_dist_pytorch(backend: str, init_backend: str = 'torch', **kwargs: Any) -> None:
        # Accelerators, and deepspeed / colossalai initialisation: mmengine's own code path.
        if not no_accelerator() or init_backend != 'torch':
            return original(backend, init_backend=init_backend, **kwargs)
        if backend == 'nccl':
            _warn_nccl_to_gloo()
            backend = 'gloo'
        # Like mmengine: rank and world size come from the launcher's environment (env://).
        torch_dist.init_process_group(backend=backend, **kwargs)

    setattr(init_dist_pytorch, _MARK, True)
    return init_dist_pytorch


def _wrap_runner_wrap_model(original: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``Runner.wrap_model`` that uses :class:`RetinaDistributedDataParallel` for CPU DDP."""

    @functools.wraps(original)
    def wrap_model(self: Runner, model_wrapper_cfg: Optional[dict],
                   model: nn.Module) -> Union[nn.Module, MMDistributedDataParallel]:
        if (model_wrapper_cfg is None and self.distributed and no_accelerator()
                and not is_model_wrapper(model)):
            # The same arguments mmengine's default branch gives MMDistributedDataParallel
            # (the Runner adds device_ids itself; our wrapper drops them for CPU modules).
            model_wrapper_cfg = dict(
                type='RetinaDistributedDataParallel', broadcast_buffers=False,
                find_unused_parameters=self.cfg.get('find_unused_parameters', False))
        return original(self, model_wrapper_cfg, model)

    setattr(wrap_model, _MARK, True)
    return wrap_model


def install_cpu_distributed() -> None:
    """Wraps ``mmengine.dist.utils._init_dist_pytorch`` and ``Runner.wrap_model`` (idempotent).

    ``mmengine.dist.init_dist`` calls ``_init_dist_pytorch`` through the global name of
    ``mmengine.dist.utils``, so replacing that attribute is enough; nothing else imports it.
    """
    if not getattr(mmengine_dist_utils._init_dist_pytorch, _MARK, False):
        mmengine_dist_utils._init_dist_pytorch = _wrap_init_dist_pytorch(
            mmengine_dist_utils._init_dist_pytorch)
    if not getattr(Runner.wrap_model, _MARK, False):
        Runner.wrap_model = _wrap_runner_wrap_model(Runner.wrap_model)


__all__ = ['RetinaDistributedDataParallel', 'install_cpu_distributed', 'no_accelerator']
