"""'Did you mean ...?' hints for misspelled ``type=`` names in configs.

mmengine reports an unknown type as ``KeyError: 'RetinaNetHed is not in the mmdet::model
registry. Please check ...'``. The hint keeps that message and appends the close matches
(``difflib``) among the names registered there, plus the names this plugin registered, e.g.
``... [hint] did you mean 'RetinaNetHead', 'RetinaHead'? mmdet_retina_plugin registers in
mmdet::model: RetinaFPN, RetinaFocalLoss, RetinaNetHead``.

Nothing is wrapped by default. Either an error path asks for the text
(:func:`hint_for_key_error`), or a caller opts in: ``with registry_hints(): ...`` for a block, or
``MMDET_RETINA_REGISTRY_HINTS=1`` for a whole process (e.g. ``mim train``), which makes
``import mmdet_retina_plugin`` call :func:`install_registry_hints` and say so in the log.
"""
import contextlib
import difflib
import functools
import os
import re
from typing import Any, Callable, Iterator, List

from mmdet import registry as mmdet_registry
from mmengine import registry as mmengine_registry
from mmengine.logging import print_log
from mmengine.registry import Registry

PLUGIN_PACKAGE = 'mmdet_retina_plugin'
HINT_MARKER = '[hint]'
# Registries whose ``build`` gets the hint; each is wrapped in mmdet and in mmengine's root
# (the Runner builds the model and hooks through the root, which switches to mmdet's scope).
HINTED_REGISTRIES = ('MODELS', 'TASK_UTILS', 'HOOKS', 'TRANSFORMS', 'DATASETS')
# Set to '1', ``import mmdet_retina_plugin`` installs the hints for the whole process.
HINTS_ENV = 'MMDET_RETINA_REGISTRY_HINTS'
# mmengine's build_from_cfg: "<type> is not in the <scope>::<name> registry. Please check ..."
_UNKNOWN_TYPE = re.compile(r'(\S+) is not in the ([^\s:]+)::(.+?) registry\. ')


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
    """Hint text for an unknown ``type_name`` in ``reg``.

    Args:
        reg (Registry): the registry the name was looked up in.
        type_name (str): the unknown ``type``, with or without a ``scope.`` prefix.

    Returns:
        str: ``' [hint] ...'``: close matches and this plugin's names there; ``''`` when there
        is nothing to say.
    """
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


def hint_for_key_error(err: KeyError) -> str:
    """The hint for mmengine's "unknown type" ``KeyError``, from the error alone.

    For error paths that catch the failed build (e.g. a tool that loads a config): mmengine's
    message names the type and the registry (``scope::name``) it was looked up in.

    Args:
        err (KeyError): an error raised by a registry's ``build``.

    Returns:
        str: the text to append (``' [hint] ...'``); ``''`` for any other error, a registry
        outside mmdet's and mmengine's, or an error that already carries the hint.
    """
    msg = err.args[0] if err.args and isinstance(err.args[0], str) else ''
    match = _UNKNOWN_TYPE.match(msg)
    if match is None or HINT_MARKER in msg:
        return ''
    type_name, scope, name = match.groups()
    for module in (mmdet_registry, mmengine_registry):
        for reg in vars(module).values():
            if isinstance(reg, Registry) and reg.scope == scope and reg.name == name:
                return registry_hint(reg, type_name)
    return ''


def _with_hint(build: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(build)
    def hinted_build(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return build(cfg, *args, **kwargs)
        except KeyError as err:
            hint = hint_for_key_error(err)  # '' once a nested build has added its hint
            if hint:
                err.args = (err.args[0] + hint,) + err.args[1:]
            raise

    hinted_build.retina_hinted = True  # type: ignore[attr-defined]
    return hinted_build


def install_registry_hints() -> List[Registry]:
    """Wraps ``build`` of mmdet's and mmengine's :data:`HINTED_REGISTRIES` until
    :func:`uninstall_registry_hints`; an opt-in (:func:`registry_hints`, or the environment
    variable :data:`HINTS_ENV` at ``import mmdet_retina_plugin``), never done by default.

    Only instance attributes of those registries are set; other registries and the
    :class:`~mmengine.registry.Registry` class are untouched, and any error other than an
    unknown ``type`` passes through unchanged.

    Returns:
        List[Registry]: the registries wrapped by this call (none when already wrapped).
    """
    wrapped = []
    for name in HINTED_REGISTRIES:
        for module in (mmdet_registry, mmengine_registry):
            reg = getattr(module, name)
            if not getattr(reg.build, 'retina_hinted', False):
                reg.build = _with_hint(reg.build)
                wrapped.append(reg)
    return wrapped


def uninstall_registry_hints(registries: List[Registry]) -> None:
    """Gives ``registries`` (what :func:`install_registry_hints` returned) their own ``build``.

    Args:
        registries (List[Registry]): registries wrapped by :func:`install_registry_hints`.
    """
    for reg in registries:
        original = reg.build.__wrapped__
        del reg.build  # the class's method shows through again, as before
        if reg.build != original:  # what was wrapped was an instance attribute: put it back
            reg.build = original


def install_registry_hints_if_asked() -> None:
    """Calls :func:`install_registry_hints` when the environment variable :data:`HINTS_ENV` is
    ``'1'`` (a process-wide opt-in, e.g. for ``mim train``), and logs that it did."""
    if os.environ.get(HINTS_ENV) == '1':
        hinted = install_registry_hints()
        print_log(f'mmdet_retina_plugin: {HINTS_ENV}=1: an unknown type in {len(hinted)} '
                  'registries of mmdet and mmengine gets a name hint', logger='current')


@contextlib.contextmanager
def registry_hints() -> Iterator[List[Registry]]:
    """Hints for misspelled ``type`` names built inside the block (e.g. a tool loading a config).

    Yields:
        List[Registry]: the registries wrapped on entry and restored on exit (empty inside an
        outer block, which keeps its wrappers).
    """
    wrapped = install_registry_hints()
    try:
        yield wrapped
    finally:
        uninstall_registry_hints(wrapped)
