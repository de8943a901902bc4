"""One training step of stock and of ours with shared weights, the same batch and RNG state."""
import copy
import gc
import importlib
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .builds import build_model, mmdet_scope, random_boxes, seed_everything, setup_registries
from .zoo_configs import (
    GRAD_FLOOR,
    GRAD_RTOL,
    LOSS_ATOL,
    LOSS_RTOL,
    SWAPS,
    short_error,
    swap_types,
)


def _num_classes(model_cfg: Any) -> int:
    """The smallest class count of the model's non-RPN heads (1 when none is given)."""
    values: List[int] = []

    def visit(obj: Any, in_rpn: bool) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key in ('num_classes', 'num_things_classes') and isinstance(value, int) \
                        and not in_rpn and value > 0:
                    values.append(value)
                visit(value, in_rpn or 'rpn' in str(key))
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value, in_rpn)

    visit(model_cfg, False)
    return min(values) if values else 1


#: ``(height, width)`` of the step's two images, and the larger pair stock's step is retried
#: with when the small one is too small for the model (SSD's last convs, DINO's 900 queries
#: over the encoder's tokens, DDOD's deformable convs).
STEP_SIZES = ((160, 192), (192, 160))
LARGE_STEP_SIZES = ((320, 384), (384, 320))
_TOO_SMALL = ("Kernel size can't be greater than actual input size",
              'input image is smaller than kernel', 'selected index k out of range')


def make_batch(model_cfg: Any, seed: int = 0,
               sizes: Sequence[Tuple[int, int]] = STEP_SIZES) -> Dict[str, Any]:
    """A seeded batch of random images with boxes, masks and semantic maps, as a loader gives.

    Args:
        model_cfg: the model config (for the number of classes).
        seed (int): the seed of every random value.
        sizes (Sequence[tuple[int, int]]): ``(height, width)`` of each image.

    Returns:
        dict: ``inputs`` (uint8 CHW tensors) and ``data_samples`` (``DetDataSample`` with
        ``gt_instances`` bboxes/labels/masks, ``ignored_instances``, ``gt_sem_seg`` and the
        metainfo a loader sets: img_shape, ori_shape, scale_factor, flip, img_id; the data
        preprocessor adds pad_shape and batch_input_shape).
    """
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData
    gen = torch.Generator().manual_seed(seed)
    num_classes = _num_classes(model_cfg)
    inputs, samples = [], []
    for index, (h, w) in enumerate(sizes):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        n = 3 + index
        boxes = random_boxes(gen, n, (h, w), 16.0)
        masks = np.zeros((n, h, w), dtype=np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        sample = DetDataSample(metainfo=dict(
            img_id=index, img_path=f'random_{index}.jpg', ori_shape=(h, w), img_shape=(h, w),
            scale_factor=(1.0, 1.0), flip=False, flip_direction=None))
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.randint(0, num_classes, (n,), generator=gen),
            masks=BitmapMasks(masks, h, w))
        sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4),
                                                labels=torch.zeros(0, dtype=torch.long))
        sem = torch.randint(0, num_classes, (1, h, w), generator=gen)
        sample.gt_sem_seg = PixelData(sem_seg=sem)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@contextmanager
def _deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def run_step(model: torch.nn.Module, model_cfg: Any, seed: int = 0,
             sizes: Sequence[Tuple[int, int]] = STEP_SIZES
             ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
    """One training forward/backward on :func:`make_batch`'s batch, RNG seeded first.

    Args:
        model (torch.nn.Module): the detector (put in train mode here).
        model_cfg: its config (for the batch).
        seed (int): the seed of the batch and of the RNG state before the step.
        sizes (Sequence[tuple[int, int]]): the images' ``(height, width)``.

    Returns:
        tuple: the logged losses (``parse_losses``' log_vars) and the gradient of each parameter
        that received one.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    batch = make_batch(model_cfg, seed, sizes)
    with mmdet_scope(), _deterministic():
        seed_everything(seed)
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
        loss, log_vars = model.parse_losses(losses)
        loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
             if p.grad is not None}
    return {k: float(torch.as_tensor(v).detach()) for k, v in log_vars.items()}, grads


def compare_steps(stock: Tuple[Dict[str, float], Dict[str, torch.Tensor]],
                  ours: Tuple[Dict[str, float], Dict[str, torch.Tensor]]) -> Tuple[List[str],
                                                                                    float]:
    """Compares two :func:`run_step` results under the module's loss and gradient criteria.

    Args:
        stock (tuple): stock's losses and gradients.
        ours (tuple): ours.

    Returns:
        tuple: the differences ([] when none) and the largest per-tensor gradient error relative
        to its bound's scale (``|dg|_2 / max(|g|_2, 1e-3 |G|_2)``).
    """
    (stock_losses, stock_grads), (ours_losses, ours_grads) = stock, ours
    errors = []
    if set(stock_losses) != set(ours_losses):
        errors.append(f'loss names differ: stock {sorted(stock_losses)} vs ours '
                      f'{sorted(ours_losses)}')
    for key in sorted(set(stock_losses) & set(ours_losses)):
        a, b = stock_losses[key], ours_losses[key]
        if not np.isfinite(b):
            errors.append(f'{key}: ours {b} (stock {a})')
        elif abs(a - b) > LOSS_RTOL * abs(a) + LOSS_ATOL:
            rel = abs(a - b) / max(abs(a), 1e-12)
            errors.append(f'{key}: stock {a:.6g} vs ours {b:.6g} (rel {rel:.2g})')
    if set(stock_grads) != set(ours_grads):
        only_stock = sorted(set(stock_grads) - set(ours_grads))
        only_ours = sorted(set(ours_grads) - set(stock_grads))
        errors.append(f'gradients on different parameters: only stock {only_stock[:3]}, '
                      f'only ours {only_ours[:3]}')
    total = float(torch.sqrt(sum((g.double() ** 2).sum() for g in stock_grads.values()))) \
        if stock_grads else 0.0
    worst, worst_key = 0.0, ''
    for key in sorted(set(stock_grads) & set(ours_grads)):
        g, h = stock_grads[key].double(), ours_grads[key].double()
        scale = max(float(g.norm()), GRAD_FLOOR * total, 1e-30)
        rel = float((g - h).norm()) / scale
        if not np.isfinite(rel):
            rel = float('inf')
        if rel > worst:
            worst, worst_key = rel, key
    if worst > GRAD_RTOL:
        errors.append(f'gradient of {worst_key} differs: |dg| / scale = {worst:.3g}')
    return errors, worst


def _detached_teacher(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """A distillation teacher kept outside the state_dict (mmdet's ``KnowledgeDistillation*``
    detectors hold it as a plain attribute), or None."""
    teacher = getattr(model, 'teacher_model', None)
    if isinstance(teacher, torch.nn.Module) and 'teacher_model' not in dict(model.named_children()):
        return teacher
    return None


def check_step(model_cfg: dict, custom_imports: Optional[dict] = None,
               names: Sequence[str] = tuple(SWAPS), seed: int = 0) -> Dict[str, Any]:
    """One training step of stock and of ours (the given types swapped) with shared weights.

    Args:
        model_cfg (dict): the model dict, downloads already neutralised.
        custom_imports (dict, optional): the config's ``custom_imports``.
        names (Sequence[str]): the types to swap.
        seed (int): the seed of init, batch and RNG state.

    Returns:
        dict: ``stock`` ('' when stock's step runs and reproduces itself, else why the family
        cannot be compared), ``errors`` (ours vs stock, [] when equal), ``losses``
        (``{name: [stock, ours]}``) and ``grad_error`` (see :func:`compare_steps`).
    """
    setup_registries()
    out: Dict[str, Any] = {'stock': '', 'errors': [], 'losses': {}, 'grad_error': None}
    try:
        for module in (custom_imports or {}).get('imports', []):
            importlib.import_module(module)
        seed_everything(seed)
        stock = build_model(model_cfg, device='cpu')
        stock.init_weights()
        weights = copy.deepcopy(stock.state_dict())
        teacher = _detached_teacher(stock)
        teacher_weights = None if teacher is None else copy.deepcopy(teacher.state_dict())
        sizes = STEP_SIZES
        try:
            stock_step = run_step(stock, model_cfg, seed, sizes)
        except Exception as exc:  # noqa: BLE001
            if not any(text in str(exc) for text in _TOO_SMALL):
                raise
            sizes = LARGE_STEP_SIZES
            stock.load_state_dict(weights, strict=True)
            stock_step = run_step(stock, model_cfg, seed, sizes)
    except Exception as exc:  # noqa: BLE001
        out['stock'] = f'stock step: {short_error(exc)}'
        return out
    bad = {k: v for k, v in stock_step[0].items() if not np.isfinite(v)}
    if bad:
        out['stock'] = f'stock loss not finite: {bad}'
        return out
    ours_cfg = swap_types(model_cfg, names)
    try:
        ours = build_model(ours_cfg, device='cpu')
        ours.load_state_dict(weights, strict=True)
        if teacher_weights is not None:
            _detached_teacher(ours).load_state_dict(teacher_weights, strict=True)
        ours_step = run_step(ours, ours_cfg, seed, sizes)
    except Exception as exc:  # noqa: BLE001
        out['errors'] = [f'ours step: {short_error(exc)}']
        return out
    errors, worst = compare_steps(stock_step, ours_step)
    out['losses'] = {k: [stock_step[0][k], ours_step[0].get(k)] for k in stock_step[0]}
    out['grad_error'] = worst
    if errors:
        stock.load_state_dict(weights, strict=True)
        again = run_step(stock, model_cfg, seed, sizes)
        if compare_steps(stock_step, again)[0]:
            out['stock'] = 'stock non-deterministic: a second stock step differs from the first'
            return out
    out['errors'] = errors
    del stock, ours
    gc.collect()
    return out


