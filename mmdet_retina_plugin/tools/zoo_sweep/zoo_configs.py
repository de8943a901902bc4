"""mmdet's model zoo as the sweep sees it: which configs there are, which use the four types,
their model dicts with only the type names swapped, nothing downloaded."""
import ast
import copy
import os
import os.path as osp
import re
import traceback
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ...utils.errors import RetinaConfigError

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


def short_error(exc: BaseException) -> str:
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
        return None, None, short_error(exc)
    model = cfg.get('model')
    imports = cfg.get('custom_imports')
    return (model.to_dict() if hasattr(model, 'to_dict') else model,
            imports.to_dict() if hasattr(imports, 'to_dict') else imports, '')


def walk_dicts(obj: Any) -> Iterator[dict]:
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from walk_dicts(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from walk_dicts(value)


def split_type(type_name: Any) -> Tuple[str, str]:
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
    for d in walk_dicts(model_cfg):
        name = split_type(d.get('type'))[1]
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
    for d in walk_dicts(swapped):
        scope, name = split_type(d.get('type'))
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
    for d in walk_dicts(out):
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
        RetinaConfigError: a teacher config that cannot be parsed (as stock would fail to
            build).
    """
    root = root or config_root()
    out = copy.deepcopy(model_cfg)
    for d in list(walk_dicts(out)):
        teacher = d.get('teacher_config')
        if isinstance(teacher, str):
            # mmdet's own configs name it from the repository root; others as Config.fromfile
            # reads them, from the working directory (an absolute path ignores ``root``)
            path = osp.join(osp.dirname(root), teacher) if teacher.startswith('configs/') \
                else osp.abspath(teacher)
            model, _, error = load_model_cfg(path, root)
            if error or not isinstance(model, dict):
                raise RetinaConfigError(
                    f'teacher_config {teacher!r}: {error or "no model"}')
            d['teacher_config'] = {'model': inline_teachers(model, root)}
    return out



_DEPTH_RE = re.compile(r'(?:^|[_-])(?:r|x|resnet|resnext|regnetx-)(\d+)')


def cost_key(rel_path: str) -> Tuple[int, int, str]:
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
                error = short_error(exc)
        if error:
            entry['load_error'] = error
        elif isinstance(model, dict):
            entry['types'] = count_types(model)
            if entry['types']:
                entry['model'] = neutralise_downloads(model, root)
                entry['custom_imports'] = imports
    return entry

