"""A frozen batch norm computed as one per-channel affine, ``y = x * scale + shift``.

RetinaNet trains its ImageNet backbone with frozen batch statistics (mmdet's
``norm_eval=True``; Detectron's and detectron2's ``FrozenBatchNorm2d``): in eval mode
``nn.BatchNorm2d`` computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``,
an affine map per channel, yet it still runs the batch-norm kernels forward and backward (cuDNN's
save-mean/invstd bookkeeping, weight and bias gradients when they require grad). Here the affine
is folded into ``scale = weight * rsqrt(running_var + eps)`` and
``shift = bias - running_mean * scale`` (C values each) and applied in one element-wise pass in
the input's dtype and memory layout: no layout conversion around it in a channels-last network,
no cast under autocast, and a backward that is one multiply (``dL/dx = dL/dy * scale``) when the
statistics and the affine are frozen.

It is a ``_BatchNorm`` (torch's batch-norm base class, whose constructor makes its
``weight``, ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked``), so
mmdet's and torchvision's BN checkpoints load with ``strict=True``, ``_abbr_ = 'bn'`` gives it
BN's names in mmdet's backbones (``bn1``, ``layer1.0.bn1``, ...), and every tool that finds
batch norms by that class finds it as it finds ``nn.BatchNorm2d``: mmengine's optimizer
constructor (``paramwise_cfg``'s ``norm_decay_mult``), mmcv's ``fuse_conv_bn`` (folding it into
the conv before it for inference), mmdet's ``norm_eval``, ``convert_sync_batchnorm`` (which
turns it into a ``SyncBatchNorm``, as it turns BN).
"""
from __future__ import annotations

from typing import Optional

import torch
from mmdet.registry import MODELS
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ...utils.compiling import is_compiling
from ...utils.errors import RetinaConfigError


@MODELS.register_module()
class RetinaFrozenBN(_BatchNorm):
    """Batch norm with fixed statistics, as one per-channel affine.

    Equal to ``nn.BatchNorm2d(...).eval()`` with the same state (to the input dtype's rounding),
    in training mode as well: the running statistics are never updated. Built by mmcv's
    ``build_norm_layer``, e.g. ``norm_cfg=dict(type='RetinaFrozenBN', requires_grad=False)``
    in mmdet's ``ResNet``; ``requires_grad=True`` trains ``weight`` and ``bias`` (the statistics
    stay fixed).

    Args:
        num_features (int): channels C of the input ``(N, C, H, W)``.
        eps (float): added to ``running_var`` before the square root, > 0.
        momentum (float, optional): accepted for ``nn.BatchNorm2d``'s signature (configs that
            set it build); the statistics never change. None or in [0, 1].
        affine (bool): hold ``weight`` and ``bias`` (BN's ``affine``); False applies only the
            statistics, as ``nn.BatchNorm2d(affine=False)`` does.
        track_running_stats (bool): must be True: a frozen norm normalises with stored
            statistics (BN without them normalises with each batch's).
        device (torch.device, optional): where the parameters and buffers are made, as BN's.
        dtype (torch.dtype, optional): their dtype, as BN's.
    """

    _abbr_ = 'bn'

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        if not isinstance(num_features, int) or isinstance(num_features, bool) \
                or num_features < 1:
            raise RetinaConfigError(f'num_features must be an int >= 1, got {num_features!r}')
        if not eps > 0:
            raise RetinaConfigError(f'eps must be > 0, got {eps!r}')
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise RetinaConfigError(f'momentum must be None or in [0, 1], got {momentum!r}')
        if not isinstance(affine, bool):
            raise RetinaConfigError(f'affine must be True or False, got {affine!r}')
        if track_running_stats is not True:
            raise RetinaConfigError('track_running_stats must be True (a frozen norm uses stored '
                                    f'statistics), got {track_running_stats!r}')
        super().__init__(num_features, float(eps), momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self._cache_key: Optional[tuple] = None
        self._cache: tuple = ()
        self._cache_state: list = []

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """The affine this norm applies.

        Returns:
            tuple[Tensor, Tensor]: ``scale`` and ``shift``, each ``(C,)`` in the statistics'
            dtype: ``y = x * scale + shift`` per channel.
        """
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        """Applies the frozen statistics and affine.

        Args:
            x (Tensor): ``(N, C, H, W)`` (or ``(N, C)``, ``(N, C, L)``), any float dtype and
                memory layout.

        Returns:
            Tensor: the shape, dtype and memory layout of ``x``.
        """
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise RetinaConfigError(f'expected input (N, {self.num_features}, ...), got '
                                    f'{tuple(x.shape)}')
        scale, shift = self._affine_in(x.dtype, x.dim())
        return torch.addcmul(shift, x, scale)

    def _affine_in(self, dtype: torch.dtype, dim: int) -> tuple[Tensor, Tensor]:
        """``scale`` and ``shift`` viewed as ``(1, C, 1, ...)`` for a ``dim``-d input and cast to
        ``dtype``, so that the element-wise pass stays in the input's dtype (bf16 under
        autocast) instead of promoting it to fp32.

        Frozen (nothing needs their gradient), they are computed once and reused while the
        state's tensors are the same and unmodified (storage, device and version counter):
        on a GPU the per-call recomputation would cost several tiny kernel launches per layer,
        and the check itself runs once per layer and call, so it is kept to a few attribute
        reads.
        """
        state = self._state()
        # compiled, traced or trained: in the graph; inference-mode state has no version
        # counter. The compile test comes first: dynamo cannot trace ``is_inference``.
        if is_compiling() or torch.jit.is_tracing() \
                or torch.is_grad_enabled() and any(t.requires_grad for t in state) \
                or any(t.is_inference() for t in state):
            return self._viewed(self.scale_and_shift(), dtype, dim)
        # inference-mode tensors may not be saved for a later backward: cached apart
        key = (dtype, dim, torch.is_inference_mode_enabled(), state[0].device,
               *(t.data_ptr() for t in state), *(t._version for t in state))
        if self._cache_key != key:
            with torch.no_grad():
                self._cache = self._viewed(self.scale_and_shift(), dtype, dim)
            self._cache_key = key
            # the storages stay alive while the key names their addresses: a tensor assigned
            # later cannot reuse one of them and pass for the cached state
            self._cache_state = [t.detach() for t in state]
        return self._cache

    def _state(self) -> list[Tensor]:
        """The tensors the affine is computed from (the parameters when ``affine``)."""
        params = self._parameters
        buffers = self._buffers
        state = [buffers['running_mean'], buffers['running_var']]
        if params['weight'] is not None:
            state.append(params['weight'])
        if params['bias'] is not None:
            state.append(params['bias'])
        return state

    @staticmethod
    def _viewed(affine: tuple[Tensor, Tensor], dtype: torch.dtype, dim: int
                ) -> tuple[Tensor, Tensor]:
        view = (1, -1) + (1,) * (dim - 2)
        return tuple(t.to(dtype).view(view) for t in affine)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return (f'{self.num_features}, eps={self.eps}, affine={self.affine}, '
                'track_running_stats=True (frozen)')
