"""The Triton focal kernel run by Triton's CPU interpreter, against the eager path and mmdet.

Run by ``test_triton_interpreter.py`` in a subprocess with ``TRITON_INTERPRET=1`` (Triton reads
it when imported; a subprocess keeps it out of every other test). Checks

* ``focal_triton.triton_loss`` against the eager ``focal_eager.eager_loss`` for every
  specialisation: gamma 0 / 2 / 1.5, no / per-anchor / per-element weights, class-index / soft
  targets, elementwise / summed / per-segment, with / without gradient, each in fp32, fp16 and
  bf16, alpha on and off, scale from a float or a device ``avg_factor``;
* one-class ``(n, 1)`` inputs (a block spans 1024 rows), every reduction;
* the index path for images of ~4M anchors, and the refusal of ~4M classes;
* per-segment sums and scaling where blocks lie inside one segment and where they cross one;
* ``focal_triton.triton_grad`` (a second backward's fused recomputation) against the eager
  derivative times a 0-d, per-segment, elementwise or expanded incoming gradient, for the same
  specialisations, and end to end over a retained graph;
* ``RetinaFocalLoss`` end to end on CPU tensors (the backend picks Triton under the
  interpreter) against mmdet's ``FocalLoss``, losses and gradients;
* the launches of a forward + backward on the Triton path: Triton kernels plus the ATen ops that
  do work (allocations, views and the interpreter's own copies inside a launch not counted),
  and the host-synchronising ops among them.

Prints one JSON line: ``{"kernel_cases", "grad_cases", "column_cases", "wide_cases",
"block_segment_cases", "loss_cases", "triton_calls", "launches", "triton_launches", "syncs",
"failures"}``, or
``{"skip": reason}`` where Triton does not import. Exits 1 if anything differs.
"""
import itertools
import json
import os
import sys
import traceback
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
N, K = 150, 9  # 1350 elements: two kernel programs of 1024, the second one masked
SEGMENTS = (4, 0, 7, 4)  # 15 rows per image, 10 images; an empty segment too
# ATen ops that launch no work of their own: allocations, views, metadata.
NO_WORK = {'aten::empty', 'aten::empty_like', 'aten::empty_strided', 'aten::new_empty',
           'aten::view', 'aten::reshape', 'aten::_reshape_alias', 'aten::as_strided',
           'aten::detach', 'detach', 'aten::alias', 'aten::expand', 'aten::unsqueeze',
           'aten::squeeze', 'aten::permute', 'aten::t', 'aten::select', 'aten::slice',
           'aten::lift_fresh', 'aten::set_', 'aten::resolve_conj', 'aten::resolve_neg',
           'aten::contiguous', 'aten::to', 'aten::_to_copy'}
SYNC_OPS = {'aten::nonzero', 'aten::item', 'aten::_local_scalar_dense', 'aten::is_nonzero',
            'aten::masked_select', 'aten::unique', 'aten::_unique2'}
LAUNCH_TAG = 'triton_launch::'


def close(got: Tensor, want: Tensor, rtol: float) -> None:
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got.to(want.dtype), want, rtol=rtol, atol=rtol * scale + 1e-12)


def kernel_cases(triton_loss: Callable, eager_loss: Callable) -> Tuple[int, List[str]]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, K, generator=g) * 4
    labels = torch.randint(0, K + 1, (N,), generator=g)  # K: background
    targets = {'index': labels, 'soft': torch.rand(N, K, generator=g)}
    weights = {'none': None, 'anchor': torch.rand(N, 1, generator=g),
               'element': torch.rand(N, K, generator=g)}
    reductions = {'none': (False, None), 'sum': (True, None), 'segments': (True, SEGMENTS)}
    failures = []
    grid = itertools.product((0.0, 2.0, 1.5), weights, targets, reductions, (True, False),
                             DTYPES)
    count = 0
    for count, (gamma, wname, tname, rname, need_grad, dtype) in enumerate(grid, 1):
        alpha = None if count % 4 == 0 else 0.25
        avg = torch.tensor(3.0 + count % 5) if count % 3 else None
        reduce_sum, segments = reductions[rname]
        args = (logits.to(dtype), targets[tname], weights[wname], avg, 0.5, gamma, alpha,
                segments, reduce_sum, need_grad)
        case = f'gamma={gamma} weight={wname} target={tname} reduce={rname} ' \
               f'grad={need_grad} {dtype} alpha={alpha} avg={avg}'
        try:
            loss, grad = triton_loss(*args)
            want_loss, want_grad = eager_loss(*args)
            close(loss, want_loss, 1e-5)
            assert (grad is None) == (not need_grad), 'gradient returned iff asked for'
            if need_grad:
                assert grad.dtype == dtype, f'gradient dtype {grad.dtype}'
                close(grad.float(), want_grad, 1e-5 if dtype == torch.float32 else 1e-2)
        except Exception:  # noqa: BLE001  (report every failing case, not the first)
            failures.append(f'kernel {case}: {traceback.format_exc(limit=2)}')
    return count, failures


def column_cases(triton_loss: Callable, eager_loss: Callable) -> Tuple[int, List[str]]:
    """One class (``(n, 1)``: a float target of any other shape becomes such a column), a
    block of 1024 rows: index and soft targets, every reduction, with and without
    gradient."""
    g = torch.Generator().manual_seed(5)
    n = 2100  # three programs, the last one mostly masked
    logits = torch.randn(n, 1, generator=g) * 3
    targets = {'index': torch.randint(0, 2, (n,), generator=g),
               'soft': torch.rand(n, 1, generator=g)}
    reductions = {'none': (False, None), 'sum': (True, None), 'segments': (True, (3, 4))}
    failures = []
    count = 0
    for count, (tname, rname, need_grad) in enumerate(
            itertools.product(targets, reductions, (True, False)), 1):
        reduce_sum, segments = reductions[rname]
        args = (logits, targets[tname], None, torch.tensor(5.0), 1.0, 2.0, 0.25, segments,
                reduce_sum, need_grad)
        try:
            loss, grad = triton_loss(*args)
            want_loss, want_grad = eager_loss(*args)
            close(loss, want_loss, 1e-5)
            if need_grad:
                close(grad, want_grad, 1e-5)
        except Exception:  # noqa: BLE001
            failures.append(f'column target={tname} reduce={rname} grad={need_grad}: '
                            f'{traceback.format_exc(limit=2)}')
    return count, failures


def wide_cases(focal_triton: object, eager_loss: Callable) -> Tuple[int, List[str]]:
    """The kernel's other index path, taken for images of ~4M anchors (their in-image row is a
    64-bit remainder, not small exact divisions), and its refusal of ~4M classes: the limit
    lowered here so that small inputs reach both."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(180, K, generator=g) * 3
    labels = torch.randint(0, K + 1, (180,), generator=g)
    segments, grad_out = (40, 50), torch.tensor([0.7, 1.3])
    args = (logits, labels, None, torch.tensor(4.0), 1.0, 2.0, 0.25, segments, True)
    limit = focal_triton._SMALL_DIV_LIMIT
    focal_triton._SMALL_DIV_LIMIT = focal_triton._BLOCK + 60  # period 90 is wide, K 9 is not
    failures = []
    try:
        compare_segment_passes(focal_triton, eager_loss, args, grad_out,
                               (torch.arange(180) % 90 >= 40).long())
        try:
            focal_triton.triton_loss(torch.randn(4, 70), torch.zeros(4, dtype=torch.long),
                                     *args[2:], True)
            failures.append('wide: 70 classes were not refused under a limit of 60')
        except ValueError:
            pass
    except Exception:  # noqa: BLE001
        failures.append(f'wide: {traceback.format_exc(limit=2)}')
    finally:
        focal_triton._SMALL_DIV_LIMIT = limit
    return 4, failures


def compare_segment_passes(focal_triton: object, eager_loss: Callable, args: tuple,
                           grad_out: Tensor, seg_of_row: Tensor) -> None:
    """A per-segment loss (``args``: ``triton_loss``'s up to ``reduce_sum``): its sums and
    gradient, backward's scaling by ``grad_out`` and the fused recomputation, against the
    eager path; raises on a difference."""
    loss, grad = focal_triton.triton_loss(*args, True)
    want_loss, want_grad = eager_loss(*args, True)
    close(loss, want_loss, 1e-5)
    close(grad, want_grad, 1e-5)
    want = want_grad * grad_out[seg_of_row][:, None]
    close(focal_triton.scale_grad(grad, grad_out, args[7]), want, 1e-5)
    close(focal_triton.triton_grad(grad_out, *args), want, 1e-5)


def block_segment_cases(focal_triton: object, eager_loss: Callable) -> Tuple[int, List[str]]:
    """Per-segment sums and gradients where some blocks lie inside one segment (their scalar
    path) and others cross a segment or image boundary: 256 classes, 4 rows a block, images
    of segments of 10, 0, 6 and 9 rows."""
    g = torch.Generator().manual_seed(8)
    segments, k, images = (10, 0, 6, 9), 256, 3
    n = images * sum(segments)
    logits = torch.randn(n, k, generator=g) * 3
    labels = torch.randint(0, k + 1, (n,), generator=g)
    args = (logits, labels, torch.rand(n, 1, generator=g), torch.tensor(3.0), 1.0, 2.0, 0.25,
            segments, True)
    grad_out = torch.tensor([0.5, 2.0, 1.5, 0.75])
    seg_of_row = torch.bucketize(torch.arange(n) % sum(segments),
                                 torch.tensor(segments).cumsum(0), right=True)
    failures = []
    try:
        compare_segment_passes(focal_triton, eager_loss, args, grad_out, seg_of_row)
    except Exception:  # noqa: BLE001
        failures.append(f'block segments: {traceback.format_exc(limit=2)}')
    return 3, failures


def grad_cases(triton_grad: Callable, eager_loss: Callable) -> Tuple[int, List[str]]:
    """Backward's fused pass against the eager derivative times the incoming gradient: a 0-d,
    per-segment, elementwise and expanded-scalar incoming gradient, for every specialisation
    of targets, weights and gamma."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(N, K, generator=g) * 4
    labels = torch.randint(0, K + 1, (N,), generator=g)
    targets = {'index': labels, 'soft': torch.rand(N, K, generator=g)}
    weights = {'none': None, 'anchor': torch.rand(N, 1, generator=g),
               'element': torch.rand(N, K, generator=g)}
    rows = torch.arange(N) % sum(SEGMENTS)
    seg_of_row = torch.bucketize(rows, torch.tensor(SEGMENTS).cumsum(0), right=True)
    incoming = {  # name: (reduce_sum, segments, grad_out, its broadcast to (N, K))
        'scalar': (True, None, torch.tensor(1.7)),
        'segments': (True, SEGMENTS, torch.rand(len(SEGMENTS), generator=g) + 0.5),
        'one_segment': (True, (15,), torch.tensor([0.6])),
        'elements': (False, None, torch.rand(N, K, generator=g)),
        'expanded': (False, None, torch.tensor(2.5).expand(N, K))}
    failures = []
    count = 0
    grid = itertools.product((0.0, 2.0, 1.5), weights, targets, incoming, DTYPES)
    for count, (gamma, wname, tname, gname, dtype) in enumerate(grid, 1):
        alpha = None if count % 4 == 0 else 0.25
        avg = torch.tensor(3.0 + count % 5) if count % 3 else None
        reduce_sum, segments, grad_out = incoming[gname]
        args = (logits.to(dtype), targets[tname], weights[wname], avg, 0.5, gamma, alpha,
                segments, reduce_sum)
        per_elem = grad_out[seg_of_row][:, None] if gname == 'segments' else grad_out
        case = f'gamma={gamma} weight={wname} target={tname} grad_out={gname} {dtype}'
        try:
            got = triton_grad(grad_out, *args)
            want = eager_loss(*args, True)[1] * per_elem
            assert got.dtype == dtype, f'gradient dtype {got.dtype}'
            close(got.float(), want, 1e-5 if dtype == torch.float32 else 1e-2)
        except Exception:  # noqa: BLE001
            failures.append(f'grad {case}: {traceback.format_exc(limit=2)}')
    return count, failures


def loss_cases(retina_loss: Callable, focal_loss: Callable) -> Tuple[int, List[str]]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(N, K, generator=g) * 3
    labels = torch.randint(0, K + 1, (N,), generator=g)  # K: background
    targets = {'index': labels, 'soft': torch.rand(N, K, generator=g)}
    anchor_w, element_w = torch.rand(N, generator=g), torch.rand(N, K, generator=g)
    calls = [dict(reduction='mean', weight=anchor_w, avg_factor=torch.tensor(17.0)),
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
            failures.append(f'loss {case}: {traceback.format_exc(limit=2)}')
    return count, failures


def segment_grad_cases(retina_loss: Callable) -> List[str]:
    """Per-segment losses backpropagated through ``sum`` (a stride-0 incoming gradient) and
    through random weights, against the eager path's autograd."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(N, K, generator=g)
    labels = torch.randint(0, K + 1, (N,), generator=g)
    weight, avg = torch.rand(N, generator=g), torch.tensor(6.0)
    failures = []
    for name, reduce in (('sum', lambda v: v.sum()),
                         ('weighted', lambda v: (v * torch.arange(1.0, 5.0)).sum())):
        grads = []
        for eager in (False, True):
            x = logits.clone().requires_grad_()
            out = (focal_eager_loss(x, labels, weight, avg) if eager else
                   retina_loss()(x, labels, weight, avg_factor=avg, segments=SEGMENTS))
            reduce(out).backward()
            grads.append(x.grad)
        try:
            close(grads[0], grads[1], 1e-5)
        except AssertionError:
            failures.append(f'segment gradient through {name}: {traceback.format_exc(limit=1)}')
    return failures


def retained_graph_cases(retina_loss: Callable) -> List[str]:
    """A second backward over a retained graph (forward's gradient is handed out by the first):
    recomputed by the fused pass, equal to the eager path's autograd."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(N, K, generator=g)
    labels = torch.randint(0, K + 1, (N,), generator=g)
    weight, avg = torch.rand(N, generator=g), torch.tensor(6.0)
    seed = torch.arange(1.0, 5.0)
    grads = []
    for eager in (False, True):
        x = logits.clone().requires_grad_()
        out = (focal_eager_loss(x, labels, weight, avg) if eager else
               retina_loss()(x, labels, weight, avg_factor=avg, segments=SEGMENTS))
        out.backward(seed, retain_graph=True)
        first = x.grad.clone()
        out.backward(seed * 2)
        grads.append((first, x.grad))
    try:
        close(grads[0][0], grads[1][0], 1e-5)
        close(grads[0][1], grads[1][1], 1e-5)
    except AssertionError:
        return [f'retained graph: {traceback.format_exc(limit=1)}']
    return []


def focal_eager_loss(x: Tensor, labels: Tensor, weight: Tensor, avg: Tensor) -> Tensor:
    """The eager per-segment loss, differentiated by autograd (the reference)."""
    from mmdet_retina_plugin.models.losses.focal_eager import dense_pass, eager_loss
    return eager_loss(dense_pass, x, labels, weight[:, None], avg, 1.0, 2.0, 0.25, SEGMENTS,
                      True, False)[0]


def tag_launches() -> List[str]:
    """Wraps every interpreted Triton launch in a profiler range; returns the launch log."""
    from triton.runtime.interpreter import InterpretedFunction

    log: List[str] = []
    run = InterpretedFunction.run

    def tagged(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        log.append(self.fn.__name__)
        with torch.profiler.record_function(LAUNCH_TAG + self.fn.__name__):
            return run(self, *args, **kwargs)

    InterpretedFunction.run = tagged
    return log


def count_launches(fn: Callable[[], None]) -> Tuple[int, List[str]]:
    """Launches of ``fn``: Triton kernels and outermost ATen ops that do work (their children
    and everything inside a Triton launch are part of that launch), and the sync ops."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    launches, syncs = 0, []

    def visit(event, inside: bool) -> None:
        nonlocal launches
        name = event.name
        if name in SYNC_OPS:
            syncs.append(name)
        counted = not inside and (name.startswith(LAUNCH_TAG) or (
            name.startswith('aten::') and name not in NO_WORK))
        launches += counted
        for child in event.cpu_children:
            visit(child, inside or counted)

    for event in prof.events():
        if event.cpu_parent is None:
            visit(event, False)
    return launches, syncs


def launch_cases(retina_loss: Callable, log: List[str]
                 ) -> Dict[str, Tuple[int, List[str], int]]:
    """Forward + backward of the head's call shapes: per-anchor weights, device avg_factor.
    Per case: launches, sync ops, and how many of the launches were Triton's (``log``:
    :func:`tag_launches`')."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(N, K, generator=g)
    labels = torch.randint(0, K + 1, (N,), generator=g)
    onehot = (torch.arange(K) == labels[:, None]).float()
    weight, avg = torch.rand(N, generator=g), torch.tensor(7.0)
    cases = {'index': (torch.float32, labels, None), 'onehot': (torch.float32, onehot, None),
             'segments': (torch.float32, labels, SEGMENTS),
             'index_bf16': (torch.bfloat16, labels, None)}
    loss = retina_loss()
    counts = {}
    for name, (dtype, target, segments) in cases.items():
        x = logits.to(dtype).clone().requires_grad_()

        def step() -> None:
            out = loss(x, target, weight, avg_factor=avg, segments=segments)
            # the loss's own launches only: no seed gradient for backward to make
            torch.autograd.backward(out, grad_tensors=seed[name])

        seed = {name: torch.ones(len(segments)) if segments else torch.tensor(1.0)}
        step()  # compile the kernels first
        x.grad = None
        before = len(log)
        counts[name] = count_launches(step) + (len(log) - before,)
    return counts


def gpu_compile_cases() -> None:
    """The kernels' launches for ``gpu_compile.compile_for_gpus``: every compile-time value of
    the loss kernel (targets, weights, alpha, gamma, ``avg_factor``, loss and gradient modes,
    one, several and wide segments) and of the scaling kernel, in fp32, fp16 and bf16."""
    from mmdet_retina_plugin.models.losses import focal_triton as ft

    n, avg, segments = 2 * sum(SEGMENTS), torch.tensor(3.0), SEGMENTS  # 2 images
    labels = torch.randint(0, K + 1, (n,))
    for dtype in DTYPES:  # index targets, gamma 2, alpha, avg_factor: a sum and its gradient
        ft.triton_loss(torch.randn(n, K, dtype=dtype), labels, None, avg, 1.0, 2.0, 0.25,
                       None, True, True)
    logits = torch.randn(n, K)
    soft = torch.rand(n, K)
    ft.triton_loss(logits, soft, torch.rand(n, K), None, 1.0, 1.5, None, None, False, False)
    half = logits.half()
    ft.triton_loss(half, soft > 0.5, torch.rand(n, 1), avg, 1.0, 0.0, 0.25, segments, True,
                   True)
    ft.scale_grad(half, torch.rand(len(segments)), segments)
    bf16 = logits.bfloat16()
    for grad_out, reduce_sum, segs in ((torch.rand(len(segments)), True, segments),
                                       (torch.tensor(2.0), True, None),
                                       (torch.rand(n, K), False, None),
                                       (torch.tensor(2.0).expand(n, K), False, None)):
        ft.triton_grad(grad_out, bf16, labels.int(), None, avg, 1.0, 2.0, 0.25, segs,
                       reduce_sum)
    limit = ft._SMALL_DIV_LIMIT
    ft._SMALL_DIV_LIMIT = ft._BLOCK + 60  # an image's 90 rows are wide (as ~4M anchors are)
    try:
        wide = (40, 50)
        ft.triton_loss(torch.randn(180, K), torch.randint(0, K + 1, (180,)), None, avg, 1.0,
                       2.0, 0.25, wide, True, True)
        ft.scale_grad(torch.randn(180, K), torch.rand(2), wide)
    finally:
        ft._SMALL_DIV_LIMIT = limit


def main() -> int:
    if os.environ.get('TRITON_INTERPRET') != '1':
        raise SystemExit('run with TRITON_INTERPRET=1')
    try:
        import triton  # noqa: F401
    except ImportError as err:
        print(json.dumps({'skip': f'triton is not importable: {err}'}))
        return 0
    from mmdet.models.losses import FocalLoss

    from mmdet_retina_plugin.models.losses import RetinaFocalLoss, focal_triton
    from mmdet_retina_plugin.models.losses.focal_eager import dense_pass, eager_loss

    log = tag_launches()
    n_kernel, failures = kernel_cases(
        focal_triton.triton_loss, lambda *a: eager_loss(dense_pass, *a))
    n_grad, grad_failures = grad_cases(
        focal_triton.triton_grad, lambda *a: eager_loss(dense_pass, *a))
    n_column, column_failures = column_cases(
        focal_triton.triton_loss, lambda *a: eager_loss(dense_pass, *a))
    n_wide, wide_failures = wide_cases(focal_triton, lambda *a: eager_loss(dense_pass, *a))
    n_blocks, block_failures = block_segment_cases(
        focal_triton, lambda *a: eager_loss(dense_pass, *a))
    failures += grad_failures + column_failures + wide_failures + block_failures
    del log[:]
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='RetinaFocalLoss')  # no silent fallback
        n_loss, loss_failures = loss_cases(RetinaFocalLoss, FocalLoss)
        triton_calls = len(log)
        counts = launch_cases(RetinaFocalLoss, log)
    failures += loss_failures + segment_grad_cases(RetinaFocalLoss) + \
        retained_graph_cases(RetinaFocalLoss)
    print(json.dumps({'kernel_cases': n_kernel, 'grad_cases': n_grad,
                      'column_cases': n_column, 'wide_cases': n_wide,
                      'block_segment_cases': n_blocks, 'loss_cases': n_loss,
                      'triton_calls': triton_calls,
                      'launches': {k: v[0] for k, v in counts.items()},
                      'triton_launches': {k: v[2] for k, v in counts.items()},
                      'syncs': {k: v[1] for k, v in counts.items()}, 'failures': failures}))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
