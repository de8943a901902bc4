"""Model-zoo sweep: our four modules swapped into every config that mmdet ships.

For each config under mmdet's ``.mim/configs`` (``_base_`` files skipped) whose ``model`` uses
``FPN``, ``FocalLoss``, ``MaxIoUAssigner`` or ``RetinaHead`` anywhere (nested heads, RPN/RoI
heads, ``train_cfg`` assigners; scoped spellings such as ``'mmdet.FPN'`` keep their scope), the
sweep swaps only the type names, each type alone and all four together, builds mmdet's detector
("stock") and ours and checks:

* the state_dict keys, shapes and dtypes are identical;
* our modules are live: the built detector holds as many instances of our class as stock holds
  of mmdet's (counted over modules and their plain attributes, e.g. a head's ``assigner``);
* every ``MaxIoUAssigner`` dict of the model is built through ``TASK_UTILS`` on both sides and
  both assign the same seeded random boxes identically (indices, labels, overlaps);
* every ``FocalLoss`` dict of the model is built on both sides and both give the same loss and
  gradient on seeded random logits and labels (class indices and one-hot targets).

For one config per config folder ("family"), the detector with all four swapped also runs one
training step against stock: stock is built on the CPU and initialised (``Pretrained`` init_cfgs
neutralised on both sides), ours loads stock's state_dict with ``strict=True`` (and a distillation
teacher's, which mmdet keeps out of the state_dict), both get the same seeded batch of two random
images (larger ones when stock's step finds them too small for the model) with random boxes,
masks and semantic maps, and the same RNG state before their step. Criteria: the same loss
names, each loss within 1e-4 relative (plus 1e-7 absolute for exact zeros); the same
parameters receive gradients, and for each parameter tensor
``|g_ours - g_stock|_2 <= 1e-3 * max(|g_stock|_2, 1e-3 * |G_stock|_2)`` with ``G`` all of
stock's gradients together. When ours differs, stock's step is run again: if stock does not
reproduce itself the family is listed as "stock non-deterministic" instead of as a failure.

Models are built without ``init_weights`` on PyTorch's meta device (parameters without storage;
CPU when a module needs real values while it is built). Configs whose model dicts are equal
after neutralising ``Pretrained`` init_cfgs are checked once and the result is counted for each
of them. Configs stock cannot load or build here (an optional package missing, a file missing in
mmdet's package, a download) are counted and listed with the reason.

Run ``python tests/dropin/zoo_sweep.py --help`` (``make dropin`` runs every config and writes
``work_dirs/dropin/report.json`` and ``report.md``).
"""
import argparse
import ast
import copy
import gc
import importlib
import json
import os
import os.path as osp
import random
import re
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

#: mmdet type name -> ours.
SWAPS: Dict[str, str] = {
    'FPN': 'RetinaFPN',
    'FocalLoss': 'RetinaFocalLoss',
    'MaxIoUAssigner': 'RetinaIoUAssigner',
    'RetinaHead': 'RetinaNetHead',
}
#: The swap sets checked: each type alone, and all four together.
SWAP_SETS: Dict[str, Tuple[str, ...]] = {**{name: (name,) for name in SWAPS},
                                         'all': tuple(SWAPS)}
LOSS_RTOL = 1e-4
LOSS_ATOL = 1e-7
GRAD_RTOL = 1e-3
GRAD_FLOOR = 1e-3
#: Configs per family whose stock training step is tried before the family is given up.
STEP_TRIES = 2
_NAME_RE = re.compile(r'\b(' + '|'.join(SWAPS) + r')\b')


def config_root() -> str:
    """The folder of the configs the installed mmdet ships (``mmdet/.mim/configs``)."""
    import mmdet
    return osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')


def discover(root: Optional[str] = None) -> List[str]:
    """Every config under ``root`` except ``_base_`` files, as sorted relative paths.

    Args:
        root (str, optional): the config folder; :func:`config_root` when None.

    Returns:
        list[str]: paths such as ``'retinanet/retinanet_r50_fpn_1x_coco.py'``.
    """
    root = root or config_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != '_base_']
        found += [osp.relpath(osp.join(dirpath, f), root) for f in filenames if f.endswith('.py')]
    return sorted(found)


def family(rel_path: str) -> str:
    """The config folder a config belongs to (its first path component)."""
    return rel_path.split('/')[0]


def _base_files(path: str, root: str) -> Optional[List[str]]:
    """The ``_base_`` files ``path`` names, resolved; None when they cannot be read."""
    try:
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    bases: List[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            bases += [value] if isinstance(value, str) else list(value)
    resolved = []
    for base in bases:
        if '::' in base:
            scope, rel = base.split('::', 1)
            if scope != 'mmdet':
                return None
            resolved.append(osp.join(root, rel))
        else:
            resolved.append(osp.normpath(osp.join(osp.dirname(path), base)))
    return resolved


def may_use_types(rel_path: str, root: Optional[str] = None) -> bool:
    """Whether the config or any file it inherits from names one of the four types.

    A config whose inheritance chain never spells a type name cannot put that type into its
    model, so this prunes configs before the (slower) parse; a chain that cannot be followed
    counts as a yes.

    Args:
        rel_path (str): the config, relative to ``root``.
        root (str, optional): the config folder; :func:`config_root` when None.

    Returns:
        bool: False only when no file of the chain names a type.
    """
    root = root or config_root()
    todo, seen = [osp.join(root, rel_path)], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            with open(path, encoding='utf-8') as f:
                if _NAME_RE.search(f.read()):
                    return True
        except OSError:
            return True
        bases = _base_files(path, root)
        if bases is None:
            return True
        todo += bases
    return False


def _short_error(exc: BaseException) -> str:
    """One line naming the exception and where it was raised (innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ''
    if frames:
        frame = frames[-1]
        where = f' [at {_short_path(frame.filename)}:{frame.lineno}]'
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
    return f'{type(exc).__name__}: {message[:300]}{where}'


def _short_path(path: str) -> str:
    for marker in ('site-packages/', 'mmdet_retina_plugin/'):
        if marker in path:
            return (marker if marker.startswith('mmdet_retina') else '') + path.split(marker)[-1]
    return path


def load_model_cfg(rel_path: str, root: Optional[str] = None) -> Tuple[Optional[dict],
                                                                       Optional[dict], str]:
    """Parses a config with ``mmengine.Config.fromfile`` without importing its custom modules.

    Args:
        rel_path (str): the config, relative to ``root``.
        root (str, optional): the config folder; :func:`config_root` when None.

    Returns:
        tuple: the ``model`` dict (None when the config has none or cannot be parsed), the
        config's ``custom_imports`` (or None) and the parse error ('' when none).
    """
    from mmengine.config import Config
    root = root or config_root()
    try:
        cfg = Config.fromfile(osp.join(root, rel_path), import_custom_modules=False)
    except Exception as exc:  # noqa: BLE001  (any parse error is reported, not raised)
        return None, None, _short_error(exc)
    model = cfg.get('model')
    imports = cfg.get('custom_imports')
    return (model.to_dict() if hasattr(model, 'to_dict') else model,
            imports.to_dict() if hasattr(imports, 'to_dict') else imports, '')


def _walk_dicts(obj: Any) -> Iterator[dict]:
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from _walk_dicts(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _walk_dicts(value)


def _split_type(type_name: Any) -> Tuple[str, str]:
    """``'mmdet.FPN'`` -> ``('mmdet.', 'FPN')``; a non-string -> ``('', '')``."""
    if not isinstance(type_name, str):
        return '', ''
    scope, _, name = type_name.rpartition('.')
    return (scope + '.' if scope else ''), name


def count_types(model_cfg: Any) -> Dict[str, int]:
    """How many dicts of the model config have each of the four mmdet types (scope ignored).

    Args:
        model_cfg: the ``model`` dict of a config.

    Returns:
        dict[str, int]: the four mmdet names present, with their counts.
    """
    counts: Counter = Counter()
    for d in _walk_dicts(model_cfg):
        name = _split_type(d.get('type'))[1]
        if name in SWAPS:
            counts[name] += 1
    return dict(counts)


def swap_types(model_cfg: Any, names: Sequence[str]) -> Any:
    """A copy of the model config with the given mmdet types renamed to ours, scope kept.

    Args:
        model_cfg: the ``model`` dict of a config.
        names (Sequence[str]): mmdet names (keys of :data:`SWAPS`) to rename.

    Returns:
        the renamed copy; nothing but those ``type`` values differs.
    """
    swapped = copy.deepcopy(model_cfg)
    for d in _walk_dicts(swapped):
        scope, name = _split_type(d.get('type'))
        if name in names:
            d['type'] = scope + SWAPS[name]
    return swapped


def neutralise_downloads(model_cfg: Any, root: Optional[str] = None) -> Any:
    """A copy of the model config that downloads nothing when it is built and initialised.

    ``init_cfg`` of type ``Pretrained`` becomes None (or is dropped from a list of init_cfgs),
    and string ``pretrained`` arguments and knowledge-distillation ``teacher_ckpt`` become None.
    Applied identically to stock and ours.

    Args:
        model_cfg: the ``model`` dict of a config.
        root (str, optional): the config folder; :func:`config_root` when None.

    Returns:
        the neutralised copy.
    """
    root = root or config_root()
    out = copy.deepcopy(model_cfg)
    for d in _walk_dicts(out):
        init = d.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            d['init_cfg'] = None
        elif isinstance(init, list):
            d['init_cfg'] = [i for i in init
                             if not (isinstance(i, dict) and i.get('type') == 'Pretrained')]
        if isinstance(d.get('pretrained'), str):
            d['pretrained'] = None
        if isinstance(d.get('teacher_ckpt'), str):
            d['teacher_ckpt'] = None
    return out


def inline_teachers(model_cfg: Any, root: Optional[str] = None) -> Any:
    """A copy of the model config whose knowledge-distillation ``teacher_config`` files are
    replaced by ``{'model': <the teacher's model dict>}`` (mmdet's ``KnowledgeDistillation*``
    detectors take either), so the teacher's types are counted and swapped with the student's.

    A path relative to mmdet's repository (``configs/...``) is read from mmdet's package.

    Args:
        model_cfg: the ``model`` dict of a config.
        root (str, optional): the config folder; :func:`config_root` when None.

    Returns:
        the copy.

    Raises:
        ValueError: a teacher config that cannot be parsed (as stock would fail to build).
    """
    root = root or config_root()
    out = copy.deepcopy(model_cfg)
    for d in list(_walk_dicts(out)):
        teacher = d.get('teacher_config')
        if isinstance(teacher, str):
            # mmdet's own configs name it from the repository root; others as Config.fromfile
            # reads them, from the working directory (an absolute path ignores ``root``)
            path = osp.join(osp.dirname(root), teacher) if teacher.startswith('configs/') \
                else osp.abspath(teacher)
            model, _, error = load_model_cfg(path, root)
            if error or not isinstance(model, dict):
                raise ValueError(f'teacher_config {teacher!r}: {error or "no model"}')
            d['teacher_config'] = {'model': inline_teachers(model, root)}
    return out


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
def _mmdet_scope() -> Iterator[None]:
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
    with _mmdet_scope():  # a ConfigDict: detectors read ``train_cfg.rpn`` as attributes
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


def _random_boxes(gen: torch.Generator, n: int, size: Tuple[int, int],
                  min_side: float = 8.0) -> torch.Tensor:
    h, w = size
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - min_side, h - min_side])
    wh = min_side + torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.5
    x2y2 = torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))
    return torch.cat([xy, x2y2], dim=1)


def _assign_case(seed: int, num_gts: int) -> Tuple[Any, Any, Any]:
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    priors = _random_boxes(gen, 400, (160, 160), 4.0)
    gts = _random_boxes(gen, num_gts, (160, 160))
    if num_gts > 2:
        gts[-1] = gts[0]  # a repeated gt box (what perm_repeat_gt_cfg is for)
        priors[:3] = gts[:3]  # exact matches, so low-quality matching has ties to break
    labels = torch.randint(0, 5, (num_gts,), generator=gen)
    ignore = InstanceData(bboxes=_random_boxes(gen, 2, (160, 160), 16.0),
                          labels=torch.zeros(2, dtype=torch.long))
    return InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels), ignore


def _build_pair(registry: Any, stock_cfg: dict, ours_cfg: dict) -> Tuple[Any, Any, List[str]]:
    """Builds a stock dict and its swapped twin from ``registry``.

    Returns:
        tuple: stock, ours, and why they could not be built ([] when both are, and ours is of
        the class its config names).
    """
    with _mmdet_scope():
        try:
            stock = registry.build(copy.deepcopy(stock_cfg))
        except Exception as exc:  # noqa: BLE001
            return None, None, [f'stock {stock_cfg["type"]} does not build: {_short_error(exc)}']
        try:
            ours = registry.build(copy.deepcopy(ours_cfg))
        except Exception as exc:  # noqa: BLE001
            return None, None, [f'{ours_cfg} does not build: {_short_error(exc)}']
    if type(ours).__name__ != _split_type(ours_cfg['type'])[1]:
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
            errors.append(f'assign ({num_gts} gts) raised {_short_error(b)}')
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
            errors.append(f'{stock_cfg}: {name}: ours raised {_short_error(b)}')
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
    return [d for d in _walk_dicts(model_cfg) if _split_type(d.get('type'))[1] == name]


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
            result['stock'] = f'custom_imports: {_short_error(exc)}'
            return result
    try:
        stock = build_model(model_cfg)
    except Exception as exc:  # noqa: BLE001
        result['stock'] = _short_error(exc)
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
            result['swaps'][set_name] = [f'build: {_short_error(exc)}']
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


# ---------------------------------------------------------------------------------------------
# One training step, stock vs ours.
# ---------------------------------------------------------------------------------------------

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
        boxes = _random_boxes(gen, n, (h, w), 16.0)
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
    with _mmdet_scope(), _deterministic():
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
        out['stock'] = f'stock step: {_short_error(exc)}'
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
        out['errors'] = [f'ours step: {_short_error(exc)}']
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


# ---------------------------------------------------------------------------------------------
# The sweep.
# ---------------------------------------------------------------------------------------------

_DEPTH_RE = re.compile(r'(?:^|[_-])(?:r|x|resnet|resnext|regnetx-)(\d+)')


def _cost_key(rel_path: str) -> Tuple[int, int, str]:
    """Orders a family's configs cheapest first by name: backbone depth spelled in the file name
    (``r18``, ``x101``, ...; 50 when none), then name length, then name.
    """
    match = _DEPTH_RE.search(osp.basename(rel_path))
    depth = int(match.group(1)) if match else 50
    return depth, len(rel_path), rel_path


def load_config(rel_path: str, root: Optional[str] = None) -> Dict[str, Any]:
    """Prunes (:func:`may_use_types`) and parses one config.

    Args:
        rel_path (str): the config, relative to ``root``.
        root (str, optional): the config folder; :func:`config_root` when None.

    Returns:
        dict: ``config``, ``family``, ``types`` (empty when the model uses none of the four
        types or the config has no model) and, for kept configs, the neutralised ``model`` and
        ``custom_imports``; ``load_error`` when it cannot be parsed.
    """
    root = root or config_root()
    entry: Dict[str, Any] = {'config': rel_path, 'family': family(rel_path), 'types': {}}
    if may_use_types(rel_path, root):
        model, imports, error = load_model_cfg(rel_path, root)
        if not error and isinstance(model, dict):
            try:
                model = inline_teachers(model, root)
            except ValueError as exc:
                error = _short_error(exc)
        if error:
            entry['load_error'] = error
        elif isinstance(model, dict):
            entry['types'] = count_types(model)
            if entry['types']:
                entry['model'] = neutralise_downloads(model, root)
                entry['custom_imports'] = imports
    return entry


def _model_key(entry: Dict[str, Any]) -> str:
    return json.dumps([entry['model'], entry.get('custom_imports')], sort_keys=True, default=str)


def _build_task(args: Tuple[dict, Optional[dict]]) -> Dict[str, Any]:
    return check_builds(*args)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _map(func: Any, tasks: List[Any], workers: int, log: Any) -> List[Any]:
    """``func`` over ``tasks``: here, or in ``workers`` spawned one-thread processes."""
    if workers <= 1 or len(tasks) <= 1:
        results = map(func, tasks)
        pool = None
    else:
        import multiprocessing
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                                   initializer=_one_thread)
        results = pool.map(func, tasks, chunksize=1)
    out, start = [], time.time()
    try:
        for index, result in enumerate(results, 1):
            out.append(result)
            if index % 25 == 0:
                log(f'  {index}/{len(tasks)} done ({time.time() - start:.0f} s)')
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def _family_task(args: Tuple[List[str], Dict[str, Dict[str, Any]]]
                 ) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """One family: its build representative (unless ``done`` has every config checked) and
    its training step.

    Args:
        args (tuple): the family's configs cheapest first, and the entries already parsed and
            checked (``{config: entry}``, empty in the one-per-family mode).

    Returns:
        tuple: the family's entries parsed here or given, and its step record (None when no
        config of the family uses the types).
    """
    paths, done = args
    entries = dict(done)

    def checked(rel: str) -> Optional[Dict[str, Any]]:
        """The config's entry with its build checks, None when it does not use the types."""
        if rel not in entries:
            entries[rel] = load_config(rel)
        entry = entries[rel]
        if not entry['types']:
            return None
        if 'result' not in entry:
            entry['result'] = check_builds(entry['model'], entry.get('custom_imports'))
        return entry

    for rel in paths:
        entry = checked(rel)
        if entry is None:
            continue
        if not entry['result']['stock']:
            break
    record: Dict[str, Any] = {'config': None, 'tried': []}
    for rel in paths:
        entry = checked(rel)
        if entry is None:
            continue
        if entry['result']['stock']:
            continue
        step = check_step(entry['model'], entry.get('custom_imports'))
        if step['stock'] and len(record['tried']) + 1 < STEP_TRIES:
            record['tried'].append([entry['config'], step['stock']])
            continue
        record.update(config=entry['config'], step=step)
        if step['errors']:
            record['by_type'] = _attribute(entry)
        break
    kept = any(e['types'] for e in entries.values())
    return list(entries.values()), (record if kept else None)


def run_sweep(rel_paths: Sequence[str], everything: bool, workers: int = 1,
              log: Any = None) -> Dict[str, Any]:
    """Checks configs: one per family (``everything=False``) or all, plus one step per family.

    Each family's configs are taken cheapest first (:func:`_cost_key`). The first one that uses
    the four types and whose stock builds is the family's build representative (with
    ``everything=False`` the family's later configs are parsed only when needed); the first of
    up to :data:`STEP_TRIES` such configs whose stock training step runs is its step config.
    Both modes therefore step the same configs.

    Args:
        rel_paths (Sequence[str]): configs relative to :func:`config_root`.
        everything (bool): check every config that uses the types.
        workers (int): processes (1: all in this process).
        log (callable, optional): called with progress lines.

    Returns:
        dict: ``total`` (configs given), ``configs`` (:func:`load_config` entries of the configs
        parsed, each checked one with ``result``: :func:`check_builds`' dict) and ``steps`` (per
        family with a kept config: ``config``, ``step`` (:func:`check_step`'s dict), ``tried``
        (configs whose stock step failed before) and, when ours fails, ``by_type``).
    """
    log = log or (lambda line: None)
    by_family: Dict[str, List[str]] = {}
    for rel in rel_paths:
        by_family.setdefault(family(rel), []).append(rel)
    for members in by_family.values():
        members.sort(key=_cost_key)
    done: Dict[str, Dict[str, Dict[str, Any]]] = {name: {} for name in by_family}
    if everything:
        start = time.time()
        parsed = _map(load_config, sorted(rel_paths), workers, log)
        kept = [e for e in parsed if e['types']]
        log(f'parsed {len(parsed)} configs in {time.time() - start:.0f} s: '
            f'{len(kept)} use the types')
        todo: Dict[str, Tuple[dict, Optional[dict]]] = {}
        for entry in kept:
            todo.setdefault(_model_key(entry), (entry['model'], entry.get('custom_imports')))
        start = time.time()
        results = dict(zip(todo, _map(_build_task, list(todo.values()), workers, log)))
        log(f'built {len(todo)} distinct models for {len(kept)} configs in '
            f'{time.time() - start:.0f} s')
        for entry in parsed:
            if entry['types']:
                entry['result'] = results[_model_key(entry)]
            done[entry['family']][entry['config']] = entry
    names = sorted(by_family)
    entries: List[Dict[str, Any]] = []
    steps: Dict[str, Dict[str, Any]] = {}
    start = time.time()
    tasks = [(by_family[name], done[name]) for name in names]
    for name, (family_entries, record) in zip(names, _map(_family_task, tasks, workers, log)):
        entries += family_entries
        if record is not None:
            steps[name] = record
            failed = sorted({f'{e["config"]} [{s}]: {"; ".join(errs)}' for e in family_entries
                             if 'result' in e for s, errs in e['result']['swaps'].items()
                             if errs})
            log(f'{name}: {record["config"]}: step {_step_status(record)}'
                + ''.join(f'\n  build FAIL {line}' for line in failed))
    log(f'families done in {time.time() - start:.0f} s')
    return {'total': len(rel_paths), 'configs': sorted(entries, key=lambda e: e['config']),
            'steps': steps}


def _attribute(entry: Dict[str, Any]) -> Dict[str, List[str]]:
    """For a failing step: the step with each present type swapped alone."""
    out = {}
    for name in SWAPS:
        if name in entry['types']:
            step = check_step(entry['model'], entry.get('custom_imports'), (name,))
            out[name] = step['errors'] or ([step['stock']] if step['stock'] else [])
    return out


def _step_status(record: Dict[str, Any]) -> str:
    step = record.get('step')
    if step is None:
        return 'no config whose stock builds'
    if step['stock']:
        return 'not compared: ' + step['stock']
    return 'FAIL: ' + '; '.join(step['errors']) if step['errors'] else 'ok'


def summarize(sweep: Dict[str, Any]) -> Dict[str, Any]:
    """Counts and lists from :func:`run_sweep`'s result (JSON-able).

    Returns:
        dict: ``counts`` per swap set (``pass``, ``fail``, ``stock_builds``, ``uses``),
        ``step`` counts, ``stock_unbuildable`` and ``unloadable`` lists with reasons,
        ``failures`` (config, swap set, errors) and per-family ``steps``.
    """
    checked = [e for e in sweep['configs'] if 'result' in e]
    counts = {}
    for set_name in SWAP_SETS:
        uses = [e for e in checked if set_name == 'all' or set_name in e['types']]
        built = [e for e in uses if not e['result']['stock']]
        passed = [e for e in built if e['result']['swaps'].get(set_name) == []]
        counts[set_name] = dict(uses=len(uses), stock_builds=len(built), passed=len(passed),
                                failed=len(built) - len(passed))
    failures = [dict(config=e['config'], swap=s, errors=errs) for e in checked
                for s, errs in e['result']['swaps'].items() if errs]
    steps = sweep['steps']
    step_counts = dict(families=len(steps),
                       compared=sum(1 for r in steps.values()
                                    if r.get('step') and not r['step']['stock']),
                       passed=sum(1 for r in steps.values() if _step_status(r) == 'ok'))
    step_counts['failed'] = sum(1 for r in steps.values()
                                if _step_status(r).startswith('FAIL'))
    return dict(
        configs_total=sweep['total'], configs_parsed=len(sweep['configs']),
        configs_using_types=sum(1 for e in sweep['configs'] if e['types']),
        configs_checked=len(checked),
        counts=counts, step=step_counts,
        stock_unbuildable=[dict(config=e['config'], reason=e['result']['stock'])
                           for e in checked if e['result']['stock']],
        unloadable=[dict(config=e['config'], reason=e['load_error'])
                    for e in sweep['configs'] if 'load_error' in e],
        failures=failures,
        steps={name: dict(config=r.get('config'), status=_step_status(r),
                          tried=r['tried'], by_type=r.get('by_type'),
                          losses=(r.get('step') or {}).get('losses'),
                          grad_error=(r.get('step') or {}).get('grad_error'))
               for name, r in steps.items()})


def markdown(summary: Dict[str, Any], seconds: float, everything: bool) -> str:
    """The report as markdown: counts, step table, failures and stock-unbuildable configs."""
    lines = [f'# Drop-in sweep ({"all configs" if everything else "one config per family"}, '
             f'{seconds:.0f} s)', '',
             f'{summary["configs_total"]} configs, {summary["configs_parsed"]} parsed, '
             f'{summary["configs_using_types"]} of them use FPN/FocalLoss/MaxIoUAssigner/'
             f'RetinaHead, {summary["configs_checked"]} checked.', '',
             '| swap | passed / stock builds | failed | use the type | stock cannot build |',
             '|---|---:|---:|---:|---:|']
    for name, c in summary['counts'].items():
        label = 'all four' if name == 'all' else name
        lines.append(f'| {label} | {c["passed"]}/{c["stock_builds"]} | {c["failed"]} | '
                     f'{c["uses"]} | {c["uses"] - c["stock_builds"]} |')
    s = summary['step']
    lines += ['', f'Training step: {s["passed"]}/{s["compared"]} families equal to stock '
              f'({s["failed"]} differ, {s["families"] - s["compared"]} not compared).', '',
              '| family | config | step |', '|---|---|---|']
    for name, r in sorted(summary['steps'].items()):
        lines.append(f'| {name} | {r["config"]} | {r["status"]} |')
    if summary['failures']:
        lines += ['', '## Failures', '']
        lines += [f'- `{f["config"]}` [{f["swap"]}]: {"; ".join(f["errors"])}'
                  for f in summary['failures']]
    lines += ['', '## Stock cannot build', '']
    lines += [f'- `{u["config"]}`: {u["reason"]}' for u in summary['stock_unbuildable']]
    lines += ['', '## Stock cannot load', '']
    lines += [f'- `{u["config"]}`: {u["reason"]}' for u in summary['unloadable']]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the sweep, writes ``report.json`` and ``report.md`` and prints the markdown.

    Args:
        argv (Sequence[str], optional): command-line arguments (``--help``).

    Returns:
        int: 0 when ours equals stock everywhere it was compared, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--all', action='store_true',
                        help='every config (default: one per family, as the test suite)')
    parser.add_argument('--workers', type=int, default=2, help='processes for the builds')
    parser.add_argument('--out', default='work_dirs/dropin', help='report folder')
    parser.add_argument('--family', action='append', help='only these config folders')
    args = parser.parse_args(argv)
    start = time.time()
    paths = [p for p in discover() if not args.family or family(p) in args.family]
    sweep = run_sweep(paths, args.all, args.workers, log=lambda s: print(s, flush=True))
    summary = summarize(sweep)
    seconds = time.time() - start
    summary['seconds'] = seconds
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'report.json'), 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    text = markdown(summary, seconds, args.all)
    with open(osp.join(args.out, 'report.md'), 'w') as f:
        f.write(text)
    print(text)
    return 1 if summary['failures'] or summary['step']['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
