"""Triton kernel for the dense focal-loss sweep on CUDA (see :func:`dense_triton`).

Imported lazily by ``focal_backends`` only when the kernel is to run: importing this module
imports ``triton``. The math mirrors ``retina_focal_loss.focal_terms`` term by term (same
names), in fp32; the tests compare the two on a GPU, and on CPU tensors through Triton's
interpreter.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 1024
# Kernel specialisations (compile-time constants; the kernel tests the same literal values).
_GAMMA_ZERO, _GAMMA_TWO, _GAMMA_ANY = 0, 2, 1
_NO_WEIGHT, _ROW_WEIGHT, _ELEM_WEIGHT = 0, 1, 2


@triton.jit
def _focal_dense_kernel(x_ptr, t_ptr, w_ptr, loss_ptr, grad_ptr, numel, num_classes,
                        alpha, gamma,
                        HAS_T: tl.constexpr, W_MODE: tl.constexpr, USE_ALPHA: tl.constexpr,
                        GAMMA_MODE: tl.constexpr, REDUCE: tl.constexpr,
                        NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    r = 1.0 / u
    nonneg = x >= 0
    p = tl.where(nonneg, r, e * r)
    p_c = tl.where(nonneg, e * r, r)
    # log1p(e) from log(u), corrected by the rounding error of u = 1 + e (no libdevice needed)
    softplus = tl.maximum(x, 0.0) + tl.log(u) - ((u - 1.0) - e) / u
    if HAS_T:
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        q = t * p_c + (1.0 - t) * p
        bce = softplus - x * t
        dbce = (1.0 - t) * p - t * p_c
        sign = 1.0 - 2.0 * t
        a = (1.0 - alpha) + (2.0 * alpha - 1.0) * t
    else:  # every element is a negative (class-index targets are fixed up by the caller)
        q = p
        bce = softplus
        dbce = p
        sign = 1.0
        a = 1.0 - alpha
    if not USE_ALPHA:
        a = 1.0
    if GAMMA_MODE == 0:
        loss = a * bce
        grad = a * dbce
    else:
        if GAMMA_MODE == 2:
            mod = q * q
            dmod = 2.0 * q
        else:
            # q == 0 only where dq/dx == 0 too (saturated 0/1 targets): the product's limit is 0
            log2_q = tl.log2(tl.where(q > 0, q, 1.0))
            mod = tl.where(q > 0, tl.exp2(gamma * log2_q), 0.0)
            dmod = tl.where(q > 0, gamma * tl.exp2((gamma - 1.0) * log2_q), 0.0)
        loss = a * mod * bce
        grad = a * (dmod * sign * (p * p_c) * bce + mod * dbce)
    if W_MODE == 1:
        w = tl.load(w_ptr + offs // num_classes, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    elif W_MODE == 2:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    if NEED_GRAD:
        tl.store(grad_ptr + offs, grad, mask=mask)
    if REDUCE:
        # One partial sum per program, summed by torch afterwards: deterministic, no atomics.
        tl.store(loss_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
    else:
        tl.store(loss_ptr + offs, loss, mask=mask)


def dense_triton(x: Tensor, t: Union[bool, Tensor], weight: Optional[Tensor], gamma: float,
                 alpha: Optional[float], reduce_sum: bool,
                 need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Triton version of ``retina_focal_loss._dense_pass`` (same args; fp32 results).

    Args:
        x (Tensor): CUDA logits ``(n, K)`` (CPU under the interpreter), fp32 / fp16 / bf16.
        t (bool | Tensor): ``False`` (all negatives) or targets ``(n, K)`` (one-hot of any
            dtype, or soft floats).
        weight (Tensor | None): ``(n, 1)`` per-anchor or ``(n, K)`` per-element weights.
        gamma (float): focusing exponent, ``>= 0``.
        alpha (float | None): weight of positives; ``None`` disables the term.
        reduce_sum (bool): return per-block partial sums ``(ceil(n * K / BLOCK),)`` (the
            caller sums them) instead of the loss ``(n, K)``.
        need_grad (bool): also return the weighted derivative ``(n, K)``.

    Returns:
        tuple[Tensor, Tensor | None]: loss and derivative, fp32.
    """
    x = x.contiguous()
    n, k = x.shape
    numel = x.numel()
    num_programs = triton.cdiv(numel, _BLOCK)
    grad = torch.empty((n, k), device=x.device, dtype=torch.float32) if need_grad else None
    loss = torch.empty((num_programs,) if reduce_sum else (n, k), device=x.device,
                       dtype=torch.float32)
    if numel:
        has_t = not isinstance(t, bool)
        if has_t and not t.is_floating_point():  # integer / bool one-hot: load as floats
            t = t.float()
        if weight is None:
            w_mode = _NO_WEIGHT
        else:
            w_mode = _ROW_WEIGHT if weight.shape[1] == 1 else _ELEM_WEIGHT
            weight = weight.contiguous()
        gamma_mode = (_GAMMA_ZERO if gamma == 0 else
                      _GAMMA_TWO if gamma == 2 else _GAMMA_ANY)
        _focal_dense_kernel[(num_programs,)](
            x, t.contiguous() if has_t else x, x if weight is None else weight,
            loss, x if grad is None else grad, numel, k,
            0.0 if alpha is None else float(alpha), float(gamma),
            HAS_T=has_t, W_MODE=w_mode, USE_ALPHA=alpha is not None,
            GAMMA_MODE=gamma_mode, REDUCE=reduce_sum, NEED_GRAD=need_grad, BLOCK=_BLOCK)
    return loss, grad
