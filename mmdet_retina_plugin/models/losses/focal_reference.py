"""The sigmoid focal loss of `Lin et al., 2017 <https://arxiv.org/abs/1708.02002>`_ and its
closed-form gradient, written as the paper states them: the reference every fast path
(``focal_eager``, ``focal_triton``) computes term by term.

With ``p = sigmoid(x)`` and ``p_t = p`` for the target class, ``1 - p`` otherwise::

    FL(x) = -alpha_t * (1 - p_t)^gamma * log(p_t)

mmdet's ``py_sigmoid_focal_loss`` generalises it to soft targets ``t`` in ``[0, 1]``::

    q = t * (1 - p) + (1 - t) * p           (= 1 - p_t for 0/1 targets)
    a = alpha * t + (1 - alpha) * (1 - t)   (= alpha_t; 1 when alpha is None)
    FL(x) = a * q^gamma * BCE(x, t),   BCE(x, t) = softplus(x) - x * t

and, since ``dq/dx = (1 - 2t) * p * (1 - p)`` and ``dBCE/dx = p - t``::

    dFL/dx = a * (gamma * q^(gamma-1) * (1 - 2t) * p * (1 - p) * BCE + q^gamma * (p - t))
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (exact checks); every other float dtype is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def focal_terms(x: Tensor, t: Union[bool, Tensor], gamma: float, alpha: Optional[float],
                need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Elementwise focal loss ``FL(x)`` and ``dFL/dx`` (module docstring's formulas).

    Args:
        x (Tensor): logits of any shape ``S``, any float dtype (computed in fp32, or fp64 for
            fp64 input).
        t (bool | Tensor): ``True`` / ``False`` for all-positive / all-negative elements, or
            a float tensor broadcastable to ``S`` with values in ``[0, 1]``.
        gamma (float): focusing exponent, ``>= 0``.
        alpha (float | None): weight of positives (``1 - alpha`` for negatives); ``None``
            disables the term.
        need_grad (bool): whether to compute the derivative.

    Returns:
        tuple[Tensor, Tensor | None]: loss ``S`` and ``d loss / d x`` ``S`` (``None`` unless
        ``need_grad``), both in :func:`compute_dtype`.
    """
    x = x.to(compute_dtype(x.dtype))
    e = torch.exp(-x.abs())
    r = 1.0 / (1.0 + e)
    nonneg = x >= 0
    # p and 1 - p are both formed from exp(-|x|) so neither loses precision when p -> 0 or 1.
    p = torch.where(nonneg, r, e * r)
    p_c = torch.where(nonneg, e * r, r)
    softplus = x.clamp_min(0) + torch.log1p(e)  # = -log(1 - p)
    if isinstance(t, bool):  # constant targets: the same formulas with t folded in
        q = p_c if t else p  # q = 1 - p_t
        bce = softplus - x if t else softplus
        dbce = -p_c if t else p  # = p - t
        sign = -1.0 if t else 1.0  # = dq/dp
        a = 1.0 if alpha is None else (alpha if t else 1.0 - alpha)
    else:
        t = t.to(x.dtype)
        q = t * p_c + (1.0 - t) * p
        bce = softplus - x * t
        dbce = (1.0 - t) * p - t * p_c
        sign = 1.0 - 2.0 * t
        a = 1.0 if alpha is None else (1.0 - alpha) + (2.0 * alpha - 1.0) * t
    if gamma == 0:
        loss = a * bce
        return loss, (a * dbce if need_grad else None)
    mod = q * q if gamma == 2 else q.pow(gamma)
    loss = a * mod * bce
    if not need_grad:
        return loss, None
    if gamma == 2:
        dmod = 2.0 * q
    else:
        # q == 0 only for saturated 0/1 targets, where dq/dx = 0 too: the product's limit is 0.
        dmod = gamma * torch.where(q > 0, q.pow(gamma - 1.0), torch.zeros_like(q))
    # d q / d x = sign * p * (1 - p)
    grad = a * (dmod * sign * (p * p_c) * bce + mod * dbce)
    return loss, grad


def focal_loss_with_prob(p: Tensor, t: Tensor, gamma: float, alpha: Optional[float]) -> Tensor:
    """Elementwise focal loss of probabilities (mmdet's ``activated=True``), via autograd.

    Args:
        p (Tensor): probabilities in ``[0, 1]``, any shape ``S``.
        t (Tensor): float targets of shape ``S`` in ``[0, 1]``.
        gamma (float): focusing exponent, ``>= 0``.
        alpha (float | None): weight of positives; ``None`` disables the term.

    Returns:
        Tensor: loss ``S``; ``binary_cross_entropy`` clamps each log at -100, as in mmdet.
    """
    q = t * (1.0 - p) + (1.0 - t) * p  # 1 - p_t
    loss = F.binary_cross_entropy(p, t, reduction='none') * q.pow(gamma)
    return loss if alpha is None else loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
