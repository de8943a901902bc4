"""Stock and ours built from one model config: state_dicts, live modules, and the assigners'
and focal losses' outputs on seeded inputs."""
import copy
import gc
import importlib
import json
import random
from collections import Counter
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .zoo_configs import (
    GRAD_RTOL,
    LOSS_ATOL,
    LOSS_RTOL,
    SWAP_SETS,
    SWAPS,
    count_types,
    short_error,
    split_type,
    swap_types,
    walk_dicts,
)


def setup_registries() -> None:
    """Registers mmdet's modules and ours (idempotent); mmengine logs warnings and errors only.

    ``init_weights`` would otherwise log every parameter's initialisation.
    """
    import logging

    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    register_all_modules(init_default_scope=False)
    importlib.import_module('mmdet_retina_plugin')
    MMLogger.get_current_instance().setLevel(logging.WARNING)


@contextmanager
def mmdet_scope() -> Iterator[None]:
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


def build_model(model_cfg: dict, device: str = 'meta') -> torch.nn.Module:
    """Builds a detector with ``MODELS.build`` without ``init_weights``.

    Args:
        model_cfg (dict): the model config.
        device (str): ``'meta'`` builds parameters without storage and falls back to the CPU
            when a module needs real values while it is built; ``'cpu'`` builds on the CPU.

    Returns:
        torch.nn.Module: the detector.
    """
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    with mmdet_scope():  # a ConfigDict: detectors read ``train_cfg.rpn`` as attributes
        if device == 'meta':
            try:
                with torch.device('meta'):
                    return MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))
            except Exception:  # noqa: BLE001  (some modules compute values while they build)
                pass
        return MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))


def state_signature(model: torch.nn.Module) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` of every state_dict entry."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}


def compare_signatures(stock: Dict[str, Tuple[Tuple[int, ...], str]],
                       ours: Dict[str, Tuple[Tuple[int, ...], str]]) -> List[str]:
    """What differs between two :func:`state_signature` results ([] when identical)."""
    errors = []
    missing = sorted(set(stock) - set(ours))
    extra = sorted(set(ours) - set(stock))
    if missing:
        errors.append(f'state_dict: {len(missing)} keys missing in ours, e.g. {missing[:3]}')
    if extra:
        errors.append(f'state_dict: {len(extra)} unexpected keys in ours, e.g. {extra[:3]}')
    differ = [k for k in stock if k in ours and stock[k] != ours[k]]
    if differ:
        k = differ[0]
        errors.append(f'state_dict: {len(differ)} entries differ in shape/dtype, e.g. {k}: '
                      f'stock {stock[k]} vs ours {ours[k]}')
    if not errors and list(stock) != list(ours):
        errors.append('state_dict: same keys in a different order')
    return errors


def live_classes(model: torch.nn.Module) -> Counter:
    """Class names of the mmdet/plugin objects reachable from a model.

    Walks every submodule and the plain attributes of each (lists, tuples and dicts included),
    so a head's ``assigner`` or a RoI head's list of ``bbox_assigner`` counts.

    Args:
        model (torch.nn.Module): the detector.

    Returns:
        Counter: instances per class name.
    """
    counts: Counter = Counter()
    seen = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
            return
        if isinstance(obj, dict):
            for item in obj.values():
                visit(item, depth + 1)
            return
        module = type(obj).__module__ or ''
        if not module.startswith(('mmdet', 'mmdet_retina_plugin')):
            return
        seen.add(id(obj))
        counts[type(obj).__name__] += 1
        attrs = getattr(obj, '__dict__', {})
        for key, value in attrs.items():
            if key in ('_parameters', '_buffers', '_modules'):
                continue
            visit(value, depth + 1)
        if isinstance(obj, torch.nn.Module):
            for child in obj.children():
                visit(child, depth + 1)

    visit(model, 0)
    return counts


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_boxes(gen: torch.Generator, n: int, size: Tuple[int, int],
                  min_side: float = 8.0) -> torch.Tensor:
    h, w = size
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - min_side, h - min_side])
    wh = min_side + torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.5
    x2y2 = torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))
    return torch.cat([xy, x2y2], dim=1)


def _assign_case(seed: int, num_gts: int) -> Tuple[Any, Any, Any]:
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    priors = random_boxes(gen, 400, (160, 160), 4.0)
    gts = random_boxes(gen, num_gts, (160, 160))
    if num_gts > 2:
        gts[-1] = gts[0]  # a repeated gt box (what perm_repeat_gt_cfg is for)
        priors[:3] = gts[:3]  # exact matches, so low-quality matching has ties to break
    labels = torch.randint(0, 5, (num_gts,), generator=gen)
    ignore = InstanceData(bboxes=random_boxes(gen, 2, (160, 160), 16.0),
                          labels=torch.zeros(2, dtype=torch.long))
    return InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels), ignore


def _build_pair(registry: Any, stock_cfg: dict, ours_cfg: dict) -> Tuple[Any, Any, List[str]]:
    """Builds a stock dict and its swapped twin from ``registry``.

    Returns:
        tuple: stock, ours, and why they could not be built ([] when both are, and ours is of
        the class its config names).
    """
    with mmdet_scope():
        try:
            stock = registry.build(copy.deepcopy(stock_cfg))
        except Exception as exc:  # noqa: BLE001
            return None, None, [f'stock {stock_cfg["type"]} does not build: {short_error(exc)}']
        try:
            ours = registry.build(copy.deepcopy(ours_cfg))
        except Exception as exc:  # noqa: BLE001
            return None, None, [f'{ours_cfg} does not build: {short_error(exc)}']
    if type(ours).__name__ != split_type(ours_cfg['type'])[1]:
        return None, None, [f'{registry.name} built {type(ours).__name__} for {ours_cfg["type"]}']
    return stock, ours, []


def compare_assigner(stock_cfg: dict, ours_cfg: dict) -> List[str]:
    """Builds both assigner dicts through ``TASK_UTILS`` and compares their assignments.

    Cases: 12 gts (one repeated, three matched exactly by a prior), 1 gt and no gt, each with
    two boxes to ignore; the RNG is reseeded before each side (``perm_repeat_gt_cfg`` permutes
    at random).

    Args:
        stock_cfg (dict): an mmdet ``MaxIoUAssigner`` dict from a config.
        ours_cfg (dict): the same dict with our type.

    Returns:
        list[str]: the differences ([] when none).
    """
    from mmdet.registry import TASK_UTILS
    stock, ours, errors = _build_pair(TASK_UTILS, stock_cfg, ours_cfg)
    if errors:
        return errors
    for case, num_gts in enumerate((12, 1, 0)):
        results = []
        for side in (stock, ours):
            pred, gt, ignore = _assign_case(case, num_gts)
            seed_everything(case)
            try:
                results.append(side.assign(pred, gt, ignore))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        a, b = results
        if isinstance(a, Exception):
            continue  # stock itself cannot assign this case: nothing to compare
        if isinstance(b, Exception):
            errors.append(f'assign ({num_gts} gts) raised {short_error(b)}')
            continue
        for field in ('gt_inds', 'labels', 'max_overlaps'):
            x, y = getattr(a, field), getattr(b, field)
            if (x is None) != (y is None) or (x is not None and not (
                    x.shape == y.shape and torch.allclose(x.float(), y.float(), atol=1e-6))):
                errors.append(f'assign ({num_gts} gts, {stock_cfg}): {field} differs')
        if a.num_gts != b.num_gts:
            errors.append(f'assign ({num_gts} gts): num_gts {a.num_gts} vs {b.num_gts}')
    return errors


def compare_loss(stock_cfg: dict, ours_cfg: dict) -> List[str]:
    """Builds both focal-loss dicts through ``MODELS`` and compares loss and gradient.

    Inputs: 64 x 7 logits (probabilities when the config says ``activated=True``) with class
    indices in [0, 7] (7 = background) or one-hot targets, per-sample weights and an
    ``avg_factor``, under the config's reduction and under ``reduction_override='none'``.
    Arguments and result as :func:`compare_assigner`'s, with ``FocalLoss`` dicts.
    """
    from mmdet.registry import MODELS
    stock, ours, errors = _build_pair(MODELS, stock_cfg, ours_cfg)
    if errors:
        return errors
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=gen) * 3
    labels = torch.randint(0, 8, (64,), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, 8)[:, :7].float()
    weight = torch.rand(64, generator=gen)
    activated = bool(stock_cfg.get('activated', False))
    cases = [('labels', labels, {}), ('labels+weight', labels, dict(weight=weight,
                                                                     avg_factor=23.0)),
             ('one-hot', onehot, {}), ('none', labels, dict(reduction_override='none'))]
    for name, target, kwargs in cases:
        outs = []
        for side in (stock, ours):
            x = logits.clone().requires_grad_(True)
            pred = x.sigmoid() if activated else x
            try:
                loss = side(pred, target.clone(), **kwargs)
                loss.sum().backward()
                outs.append((loss.detach(), x.grad))
            except Exception as exc:  # noqa: BLE001
                outs.append(exc)
        a, b = outs
        if isinstance(a, Exception):
            continue
        if isinstance(b, Exception):
            errors.append(f'{stock_cfg}: {name}: ours raised {short_error(b)}')
            continue
        if a[0].shape != b[0].shape or not torch.allclose(a[0], b[0], rtol=LOSS_RTOL,
                                                           atol=LOSS_ATOL):
            errors.append(f'{stock_cfg}: {name}: loss {a[0].flatten()[:3].tolist()} vs '
                          f'{b[0].flatten()[:3].tolist()} (shapes {tuple(a[0].shape)} / '
                          f'{tuple(b[0].shape)})')
        elif not torch.allclose(a[1], b[1], rtol=GRAD_RTOL, atol=1e-6):
            errors.append(f'{stock_cfg}: {name}: gradient differs, max '
                          f'{(a[1] - b[1]).abs().max().item():.3g}')
    return errors


def _dicts_of_type(model_cfg: Any, name: str) -> List[dict]:
    return [d for d in walk_dicts(model_cfg) if split_type(d.get('type'))[1] == name]


def _unique(dicts: Sequence[dict]) -> List[dict]:
    out, keys = [], set()
    for d in dicts:
        key = json.dumps(d, sort_keys=True, default=str)
        if key not in keys:
            keys.add(key)
            out.append(d)
    return out


def check_builds(model_cfg: dict, custom_imports: Optional[dict] = None) -> Dict[str, Any]:
    """Builds stock and every applicable swap of one model config and compares them.

    Args:
        model_cfg (dict): the model dict, downloads already neutralised.
        custom_imports (dict, optional): the config's ``custom_imports``.

    Returns:
        dict: ``types`` (the four mmdet names present, with counts), ``stock`` ('' when stock
        builds, else why not) and ``swaps``: per swap set (:data:`SWAP_SETS`; 'all' always) a
        list of errors, [] when ours equals stock.
    """
    setup_registries()
    types = count_types(model_cfg)
    result: Dict[str, Any] = {'types': types, 'stock': '', 'swaps': {}}
    for module in (custom_imports or {}).get('imports', []):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001
            result['stock'] = f'custom_imports: {short_error(exc)}'
            return result
    try:
        stock = build_model(model_cfg)
    except Exception as exc:  # noqa: BLE001
        result['stock'] = short_error(exc)
        return result
    stock_sig, stock_live = state_signature(stock), live_classes(stock)
    del stock
    present = tuple(name for name in SWAPS if name in types)
    loss_cache: Dict[str, List[str]] = {}
    assign_cache: Dict[str, List[str]] = {}
    for set_name, names in SWAP_SETS.items():
        names = tuple(n for n in names if n in present)
        if not names:
            continue
        if set_name == 'all' and len(names) == 1:
            result['swaps']['all'] = result['swaps'][names[0]]
            continue
        ours_cfg = swap_types(model_cfg, names)
        errors: List[str] = []
        try:
            ours = build_model(ours_cfg)
        except Exception as exc:  # noqa: BLE001
            result['swaps'][set_name] = [f'build: {short_error(exc)}']
            continue
        errors += compare_signatures(stock_sig, state_signature(ours))
        ours_live = live_classes(ours)
        del ours
        for name in names:
            want = stock_live[name] + stock_live[SWAPS[name]]
            if ours_live[SWAPS[name]] != want:
                errors.append(f'live: stock holds {want} {name}, ours '
                              f'{ours_live[SWAPS[name]]} {SWAPS[name]}')
        for name, cache, compare in (('MaxIoUAssigner', assign_cache, compare_assigner),
                                     ('FocalLoss', loss_cache, compare_loss)):
            if name not in names:
                continue
            for d in _unique(_dicts_of_type(model_cfg, name)):
                key = json.dumps(d, sort_keys=True, default=str)
                if key not in cache:
                    cache[key] = compare(d, swap_types(d, (name,)))
                errors += cache[key]
        result['swaps'][set_name] = errors
    gc.collect()
    return result


