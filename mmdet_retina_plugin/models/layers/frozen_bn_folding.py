"""Folds frozen norms into the convolutions before them, for inference.

A :class:`~.frozen_batch_norm.RetinaFrozenBN` right after a convolution scales and shifts that
convolution's output channels, so the two are one convolution: ``w' = w * scale`` per output
channel and ``b' = b * scale + shift``. Folded, R50's backbone runs 53 fewer element-wise
passes per image: on a GPU each is a kernel launch the host pays for (the bound at batch 1) and
a read and a write of a feature map.

mmcv's ``fuse_conv_bn`` folds every BN that follows a convolution among a module's children.
This folds only norms that are frozen (the same affine in training and eval mode, so the fold is
exact in either) and only where the convolution's output is what the norm normalises: a plain
convolution (not one that transforms its weights, like mmcv's ``ConvWS2d``) declared right
before the norm, with the norm's channel count, and not in a ``ConvModule`` that applies its
norm before its convolution.
"""
from __future__ import annotations

import torch
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
from torch import nn

from .frozen_batch_norm import RetinaFrozenBN

# convolutions whose forward is ``F.conv2d`` with their own weight and bias (mmcv's wrapper
# adds only the empty-input case)
_PLAIN_CONVS = (nn.Conv2d, MMCVConv2d)


def fold_frozen_bn(model: nn.Module) -> int:
    """Folds every frozen norm that follows a convolution into it, in place.

    The folded norms become ``nn.Identity`` (their attribute names stay, as mmdet's
    ``norm1`` properties read them) and their convolutions get the folded weights and a bias,
    in the weights' dtype and memory layout. Outputs equal the unfolded model's to float
    rounding. The state dict changes (the norms' entries go, the convolutions' biases come):
    fold after loading weights, and keep the unfolded model for training and checkpoints.

    Args:
        model (nn.Module): any model; modules other than the pairs above are left alone.

    Returns:
        int: the number of norms folded.
    """
    folded = 0
    for parent in list(model.modules()):
        norm_first = isinstance(parent, ConvModule) and parent.with_norm \
            and parent.order.index('norm') < parent.order.index('conv')
        previous = None
        for name, child in list(parent.named_children()):
            if (isinstance(child, RetinaFrozenBN) and type(previous) in _PLAIN_CONVS
                    and not norm_first and previous.out_channels == child.num_features):
                _fold_into(previous, child)
                setattr(parent, name, nn.Identity())
                folded += 1
            previous = child
    return folded


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: RetinaFrozenBN) -> None:
    """``conv`` followed by ``norm`` as one convolution, computed in float64."""
    scale, shift = (t.double() for t in norm.scale_and_shift())
    weight = conv.weight
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_weight = torch.empty_like(weight)  # keeps channels-last weights channels-last
    new_weight.copy_(weight.double() * scale.view(-1, 1, 1, 1))
    conv.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    conv.bias = nn.Parameter((bias * scale + shift).to(weight.dtype),
                             requires_grad=weight.requires_grad)
