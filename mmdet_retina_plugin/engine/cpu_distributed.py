"""CPU-only distributed training (gloo) with mmengine's ``pytorch`` launcher, when a config asks.

``mim train mmdet CONFIG --launcher pytorch --gpus N`` starts N processes of mmdet's
``tools/train.py`` under ``torch.distributed.launch``. On a host without an accelerator,
mmengine 0.10.7 stops there twice:

1. ``init_dist('pytorch')`` calls ``torch.cuda.set_device(LOCAL_RANK)`` before initialising the
   process group, which raises on a CPU-only torch (and with ``CUDA_VISIBLE_DEVICES=''``).
2. ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to every DDP wrapper it builds, and
   PyTorch's DDP rejects ``device_ids`` for a module whose parameters are on the CPU.

A config asks for CPU-only distributed training with three keys, nothing is changed for anyone
else (``import mmdet_retina_plugin`` only registers the two classes below)::

    runner_type = 'RetinaCPUDistributedRunner'
    env_cfg = dict(dist_cfg=dict(backend='gloo'))
    model_wrapper_cfg = dict(type='RetinaDistributedDataParallel', broadcast_buffers=False)

:class:`RetinaCPUDistributedRunner` (mmdet's ``tools/train.py`` and ``tools/test.py`` build a
config's ``runner_type`` from ``RUNNERS``) initialises the gloo process group itself, without
``set_device``, before mmengine's ``setup_env`` runs (which then skips ``init_dist``, as it does
for any already initialised process group), and says so in the log. With an accelerator it is
mmengine's ``Runner``; :class:`RetinaDistributedDataParallel` is then exactly
``MMDistributedDataParallel``.
"""
import datetime
from typing import Any, Dict, Mapping, Optional

import torch.distributed as torch_dist
from mmengine.device import get_device
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..utils.errors import RetinaConfigError

CPU_BACKEND = 'gloo'
CPU_WRAPPER_CFG = "model_wrapper_cfg=dict(type='RetinaDistributedDataParallel', " \
                  "broadcast_buffers=False)"


def no_accelerator() -> bool:
    """Whether mmengine would run on the CPU (no CUDA, NPU, MLU, MUSA or MPS device).

    Returns:
        bool: ``True`` when mmengine's ``get_device()`` is ``'cpu'``.
    """
    return get_device() == 'cpu'


def _module_on_cpu(module: nn.Module) -> bool:
    """Whether every parameter is on the CPU: the case in which DDP refuses ``device_ids``."""
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
    names up in: ``model_wrapper_cfg=dict(type='RetinaDistributedDataParallel', ...)``.

    Args:
        module (nn.Module): the model to wrap.
        detect_anomalous_params (bool): as in ``MMDistributedDataParallel``.
        **kwargs (Any): passed to ``torch.nn.parallel.DistributedDataParallel``.
    """

    def __init__(self, module: nn.Module, detect_anomalous_params: bool = False,
                 **kwargs: Any) -> None:
        if _module_on_cpu(module):
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module=module, detect_anomalous_params=detect_anomalous_params, **kwargs)


def cpu_process_group_kwargs(launcher: str, dist_cfg: Mapping[str, Any],
                             model_wrapper_cfg: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Checks a config's CPU distributed settings; the ``init_process_group`` arguments.

    Checked before any process group exists, so that every rank stops with the same message
    instead of one rank hanging in a collective the others never reach.

    Args:
        launcher (str): the Runner's launcher; only ``'pytorch'`` (``env://`` rendezvous).
        dist_cfg (Mapping[str, Any]): ``env_cfg.dist_cfg``: ``backend`` must be ``'gloo'``,
            ``init_backend`` (if given) ``'torch'``; ``timeout`` in seconds, as for mmengine.
        model_wrapper_cfg (Optional[Mapping[str, Any]]): the config's ``model_wrapper_cfg``; a
            ``DistributedDataParallel`` type must accept CPU modules
            (:class:`RetinaDistributedDataParallel` or a subclass).

    Returns:
        Dict[str, Any]: keyword arguments for ``torch.distributed.init_process_group``.

    Raises:
        RetinaConfigError: naming the field and its allowed values, if any of them is not
            usable on a host without an accelerator.
    """
    if launcher != 'pytorch':
        raise RetinaConfigError(f"launcher must be 'pytorch' for CPU distributed training, "
                                f'got {launcher!r}')
    kwargs = dict(dist_cfg)
    backend = kwargs.pop('backend', None)
    if backend != CPU_BACKEND:
        raise RetinaConfigError(
            f"env_cfg.dist_cfg.backend must be {CPU_BACKEND!r} on a host without an "
            f'accelerator, got {backend!r}')
    init_backend = kwargs.pop('init_backend', 'torch')
    if init_backend != 'torch':
        raise RetinaConfigError(
            f"env_cfg.dist_cfg.init_backend must be 'torch' for CPU distributed "
            f'training, got {init_backend!r}')
    # mmengine's default wrapper, and any DDP subclass, get device_ids from the Runner.
    wrapper_type = (model_wrapper_cfg or {}).get('type', 'MMDistributedDataParallel')
    wrapper_cls = MODEL_WRAPPERS.get(wrapper_type) if isinstance(wrapper_type, str) \
        else wrapper_type
    gets_device_ids = (isinstance(wrapper_cls, type)
                       and issubclass(wrapper_cls, DistributedDataParallel)
                       and not issubclass(wrapper_cls, RetinaDistributedDataParallel))
    if model_wrapper_cfg is None or gets_device_ids:
        raise RetinaConfigError(
            f'model_wrapper_cfg must wrap CPU modules for CPU distributed training '
            f'({CPU_WRAPPER_CFG}), got {model_wrapper_cfg!r}')
    if kwargs.get('timeout') is not None:
        # Seconds in the config, a timedelta for torch (mmengine's init_dist converts it too).
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    return dict(backend=CPU_BACKEND, **kwargs)


@RUNNERS.register_module()
class RetinaCPUDistributedRunner(Runner):
    """mmengine ``Runner`` that also trains with the ``pytorch`` launcher on CPU-only hosts.

    Selected by a config's ``runner_type = 'RetinaCPUDistributedRunner'``. Without an
    accelerator, a distributed run (``launcher='pytorch'``) initialises the process group with
    gloo, without mmengine's ``torch.cuda.set_device``, after checking the config
    (:func:`cpu_process_group_kwargs`). Everything else, and everything with an accelerator or
    without a launcher, is mmengine's ``Runner``.
    """

    def setup_env(self, env_cfg: Dict) -> None:
        """Initialises the gloo process group on CPU-only hosts, then mmengine's ``setup_env``.

        Args:
            env_cfg (Dict): the config's ``env_cfg``.
        """
        if self.distributed and not is_distributed() and no_accelerator():
            kwargs = cpu_process_group_kwargs(self.launcher, env_cfg.get('dist_cfg', {}),
                                              self.cfg.get('model_wrapper_cfg'))
            torch_dist.init_process_group(**kwargs)  # rank and world size from env://
            print_log(f'RetinaCPUDistributedRunner: no accelerator; process group initialised '
                      f"with {CPU_BACKEND!r} (rank {torch_dist.get_rank()} of "
                      f'{torch_dist.get_world_size()}) without torch.cuda.set_device',
                      logger='current')
        super().setup_env(env_cfg)


__all__ = ['RetinaCPUDistributedRunner', 'RetinaDistributedDataParallel',
           'cpu_process_group_kwargs', 'no_accelerator']
