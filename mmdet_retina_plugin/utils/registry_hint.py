"""'Did you mean ...?' hints for misspelled ``type=`` names in configs.

mmengine reports an unknown type as ``KeyError: 'RetinaNetHed is not in the mmdet::model
registry. Please check ...'``. :func:`install_registry_hints` keeps that message and appends the
close matches (``difflib``) among the names registered there, plus the names this plugin
registered, e.g. ``... [hint] did you mean 'RetinaNetHead', 'RetinaHead'? mmdet_retina_plugin
registers in mmdet::model: RetinaFPN, RetinaFocalLoss, RetinaNetHead``.
"""
import difflib
import functools
from typing import Any, Callable, List

from mmdet import registry as mmdet_registry
from mmengine import registry as mmengine_registry
from mmengine.registry import Registry

PLUGIN_PACKAGE = 'mmdet_retina_plugin'
HINT_MARKER = '[hint]'
# Registries whose ``build`` gets the hint; each is wrapped in mmdet and in mmengine's root
# (the Runner builds the model and hooks through the root, which switches to mmdet's scope).
HINTED_REGISTRIES = ('MODELS', 'TASK_UTILS', 'HOOKS', 'TRANSFORMS', 'DATASETS')


def _names_in_scope(reg: Registry) -> List[str]:
    """Names visible from ``reg``: its own, its ancestors' and its descendants'."""
    names = set()
    todo = [reg]
    while todo:
        r = todo.pop()
        names.update(r.module_dict)
        todo.extend(r.children.values())
    r = reg.parent
    while r is not None:
        names.update(r.module_dict)
        r = r.parent
    return sorted(names)


def _plugin_names(reg: Registry) -> List[str]:
    """Names registered by this plugin in ``reg``."""
    return sorted(name for name, obj in reg.module_dict.items()
                  if getattr(obj, '__module__', '').startswith(PLUGIN_PACKAGE))


def registry_hint(reg: Registry, type_name: str) -> str:
    """Hint text for an unknown ``type_name`` in ``reg`` (``''`` when there is nothing to say)."""
    short = type_name.rsplit('.', 1)[-1]  # 'mmdet.RetinaNetHed' -> 'RetinaNetHed'
    matches = difflib.get_close_matches(short, _names_in_scope(reg), n=3, cutoff=0.6)
    # mmengine's root registries hold our modules in their 'mmdet' child
    home = reg.children.get('mmdet', reg)
    ours = _plugin_names(home)
    parts = []
    if matches:
        parts.append('did you mean ' + ', '.join(repr(m) for m in matches) + '?')
    if ours:
        parts.append(f'{PLUGIN_PACKAGE} registers in {home.scope}::{home.name}: '
                     + ', '.join(ours))
    return f' {HINT_MARKER} ' + ' '.join(parts) if parts else ''


def _with_hint(reg: Registry, build: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(build)
    def hinted_build(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return build(cfg, *args, **kwargs)
        except KeyError as err:
            type_name = cfg.get('type') if hasattr(cfg, 'get') else None
            msg = err.args[0] if err.args and isinstance(err.args[0], str) else ''
            # Only for this cfg's own type; a nested build has already added its hint.
            if (isinstance(type_name, str) and msg.startswith(f'{type_name} is not in the')
                    and HINT_MARKER not in msg):
                err.args = (msg + registry_hint(reg, type_name),) + err.args[1:]
            raise

    hinted_build.retina_hinted = True  # type: ignore[attr-defined]
    return hinted_build


def install_registry_hints() -> List[Registry]:
    """Wraps ``build`` of the :data:`HINTED_REGISTRIES` of mmdet and mmengine (idempotent).

    Only instance attributes of those registries are set; other registries and the
    :class:`~mmengine.registry.Registry` class are untouched, and any error other than an
    unknown ``type`` passes through unchanged.

    Returns:
        the registries whose ``build`` is hinted.
    """
    hinted = []
    for name in HINTED_REGISTRIES:
        for module in (mmdet_registry, mmengine_registry):
            reg = getattr(module, name)
            if not getattr(reg.build, 'retina_hinted', False):
                reg.build = _with_hint(reg, reg.build)
            hinted.append(reg)
    return hinted
