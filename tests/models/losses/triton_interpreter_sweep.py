"""The Triton focal kernel run by Triton's CPU interpreter, against the eager path and mmdet.

Run by ``test_triton_interpreter.py`` in a subprocess with ``TRITON_INTERPRET=1`` (Triton reads
it when imported; a subprocess keeps it out of every other test). Checks

* ``_focal_dense_kernel`` (through ``dense_triton``) against the eager ``_dense_pass`` for every
  specialisation: gamma 0 / 2 / 1.5, no / per-anchor / per-element weights, class-index (all
  negatives) / soft targets, summed / elementwise, with / without gradient, each in fp32, fp16
  and bf16, alpha on and off;
* ``RetinaFocalLoss`` end to end on CPU tensors (the backend picks Triton under the
  interpreter) against mmdet's ``FocalLoss``, losses and gradients.

Prints one JSON line: ``{"kernel_cases", "loss_cases", "triton_calls", "failures"}``, or
``{"skip": reason}`` where Triton does not import. Exits 1 if anything differs.
"""
import itertools
import json
import os
import sys
import traceback
import warnings
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
N, K = 150, 9  # 1350 elements: two kernel programs of 1024, the second one masked


def close(got: Tensor, want: Tensor, rtol: float) -> None:
    scale = float(want.abs().max())
    torch.testing.assert_close(got.to(want.dtype), want, rtol=rtol, atol=rtol * scale + 1e-12)


def kernel_cases(dense_triton: Callable, dense_eager: Callable) -> Tuple[int, List[str]]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, K, generator=g) * 4
    soft = torch.rand(N, K, generator=g)
    weights = {'none': None, 'anchor': torch.rand(N, 1, generator=g),
               'element': torch.rand(N, K, generator=g)}
    failures = []
    grid = itertools.product((0.0, 2.0, 1.5), weights, ('index', 'soft'), (True, False),
                             (True, False), DTYPES)
    count = 0
    for count, (gamma, wname, tname, reduce_sum, need_grad, dtype) in enumerate(grid, 1):
        alpha: Optional[float] = None if count % 4 == 0 else 0.25
        x = logits.to(dtype)
        args = (x, False if tname == 'index' else soft, weights[wname], gamma, alpha,
                reduce_sum, need_grad)
        case = f'gamma={gamma} weight={wname} target={tname} reduce={reduce_sum} ' \
               f'grad={need_grad} {dtype} alpha={alpha}'
        try:
            loss, grad = dense_triton(*args)
            want_loss, want_grad = dense_eager(*args)
            close(loss.sum() if reduce_sum else loss, want_loss.float(), 1e-5)
            assert (grad is None) == (not need_grad), 'gradient returned iff asked for'
            if need_grad:
                close(grad, want_grad, 1e-5)
        except Exception:  # noqa: BLE001  (report every failing case, not the first)
            failures.append(f'kernel {case}: {traceback.format_exc(limit=1)}')
    return count, failures


def loss_cases(retina_loss: Callable, focal_loss: Callable) -> Tuple[int, List[str]]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(N, K, generator=g) * 3
    labels = torch.randint(0, K + 1, (N,), generator=g)  # K: background
    targets = {'index': labels, 'soft': torch.rand(N, K, generator=g)}
    anchor_w, element_w = torch.rand(N, generator=g), torch.rand(N, K, generator=g)
    calls = [dict(reduction='mean', weight=anchor_w, avg_factor=17.0),
             dict(reduction='none', weight=element_w, avg_factor=None),
             dict(reduction='sum', weight=None, avg_factor=None)]
    failures = []
    count = 0
    for count, (tname, dtype, call, gamma) in enumerate(itertools.product(
            targets, DTYPES, calls, (2.0, 1.5)), 1):
        case = f'target={tname} {dtype} {call["reduction"]} gamma={gamma}'
        try:
            out = []
            for module, x in ((retina_loss(gamma=gamma, reduction=call['reduction']),
                               logits.to(dtype)),
                              (focal_loss(gamma=gamma, reduction=call['reduction']),
                               logits.to(dtype).float())):  # stock in fp32, as ours computes
                p = x.clone().requires_grad_()
                loss = module(p, targets[tname], call['weight'], avg_factor=call['avg_factor'])
                loss.sum().backward()
                out.append((loss.detach(), p.grad))
            (loss, grad), (want_loss, want_grad) = out
            assert grad.dtype == dtype, f'gradient dtype {grad.dtype}'
            close(loss, want_loss, 1e-5)
            close(grad.float(), want_grad, 1e-4 if dtype == torch.float32 else 1e-2)
            with torch.no_grad():  # the forward-only kernel
                close(retina_loss(gamma=gamma, reduction=call['reduction'])(
                    logits.to(dtype), targets[tname], call['weight'],
                    avg_factor=call['avg_factor']), want_loss, 1e-5)
        except Exception:  # noqa: BLE001
            failures.append(f'loss {case}: {traceback.format_exc(limit=1)}')
    return count, failures


def main() -> int:
    if os.environ.get('TRITON_INTERPRET') != '1':
        raise SystemExit('run with TRITON_INTERPRET=1')
    try:
        import triton  # noqa: F401
    except ImportError as err:
        print(json.dumps({'skip': f'triton is not importable: {err}'}))
        return 0
    from mmdet.models.losses import FocalLoss

    from mmdet_retina_plugin.models.losses import RetinaFocalLoss, _triton_focal
    from mmdet_retina_plugin.models.losses import retina_focal_loss as rfl

    n_kernel, failures = kernel_cases(_triton_focal.dense_triton, rfl._dense_pass)

    calls = []
    kernel = _triton_focal.dense_triton

    def counted(*args: object) -> Tuple[Tensor, Optional[Tensor]]:
        calls.append(1)
        return kernel(*args)

    # the backend looks the kernel up when it runs, so this counts what RetinaFocalLoss uses
    _triton_focal.dense_triton = counted
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='RetinaFocalLoss')  # no silent fallback
        n_loss, loss_failures = loss_cases(RetinaFocalLoss, FocalLoss)
    failures += loss_failures
    print(json.dumps({'kernel_cases': n_kernel, 'loss_cases': n_loss,
                      'triton_calls': len(calls), 'failures': failures}))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
