"""``import mmdet_retina_plugin`` changes nothing in torch, mmengine, mmcv or mmdet except the
registries' tables and torch's weights-only allow-list.

A fresh interpreter first imports every torch / mmengine / mmcv / mmdet module this test's own
process holds (a superset of what the plugin imports, so that the plugin's import loads nothing
new of theirs), snapshots them, imports the plugin and snapshots again. The snapshot holds, for
every loaded module of those packages: each attribute of the module, of the classes it defines
and of the other objects it holds (one level down), by identity; containers (dict, list, set,
tuple) also by the identity of their items. A replaced function or method, an attribute set on a
registry instance, an entry added to a module-level table: each is a difference. The objects
are kept alive meanwhile, so an identity cannot be reused.

Run as a script (``python test_import_side_effects.py MODULES.json``), this file is that child.
"""
import importlib
import json
import os
import subprocess
import sys
import warnings
from typing import Any, Dict, List, Tuple

ROOTS = ('torch', 'mmengine', 'mmcv', 'mmdet')
Key = Tuple[str, ...]


def _describe(value: Any, keep: List[Any]) -> Any:
    keep.append(value)
    if isinstance(value, dict):
        items = list(value.items())
        keep.append(items)
        return id(value), tuple((id(k), id(v)) for k, v in items)
    if isinstance(value, (list, set, frozenset, tuple)):
        items = list(value)
        keep.append(items)
        return id(value), tuple(id(v) for v in items)
    return id(value)


def _snapshot(keep: List[Any]) -> Dict[Key, Any]:
    snap: Dict[Key, Any] = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.split('.')[0] not in ROOTS:
            continue
        for attr, value in list(vars(module).items()):
            snap[(name, attr)] = _describe(value, keep)
            if isinstance(value, type):
                if value.__module__ != name:
                    continue  # imported class: checked where it is defined
                members = vars(value)
            elif (callable(value) or isinstance(value, type(sys))
                  or not hasattr(value, '__dict__')):
                continue
            else:
                members = vars(value)  # an object the module holds, e.g. a registry
            for member, member_value in list(members.items()):
                snap[(name, attr, member)] = _describe(member_value, keep)
    return snap


def _allowed(key: Key) -> str:
    """What a changed entry is, if it may change: '' when it may not."""
    from mmengine.fileio.backends import registry_utils
    from mmengine.registry import Registry
    from torch import _weights_only_unpickler

    holder = getattr(sys.modules[key[0]], key[1], None)
    if len(key) == 3 and isinstance(holder, Registry) and key[2] == '_module_dict':
        return 'registry table'
    if len(key) == 2 and holder is registry_utils.backends:
        return 'file backend table'
    if len(key) == 2 and holder is getattr(_weights_only_unpickler, '_marked_safe_globals_set',
                                           None):
        return 'weights-only allow-list'
    return ''


def _child(modules_json: str) -> None:
    warnings.simplefilter('ignore')  # deprecated module attributes warn when looked at
    with open(modules_json) as f:
        for name in json.load(f):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001  (e.g. a module only its package may import)
                pass
    keep: List[Any] = []
    before = _snapshot(keep)
    importlib.import_module('mmdet_retina_plugin')
    after = _snapshot(keep)
    changed = sorted((k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
                     key=str)
    print(json.dumps([[list(k), k in before, _allowed(k)] for k in changed]))


def test_import_changes_only_registries_and_the_allow_list(tmp_path):
    # Here, not at the top: run as the child, this file must not import the plugin early.
    importlib.import_module('mmdet_retina_plugin')  # what it imports is then loaded here too
    modules = tmp_path / 'modules.json'
    modules.write_text(json.dumps([n for n in list(sys.modules)
                                   if n.split('.')[0] in ROOTS]))
    # Without the registry hints' opt-in, whatever the calling shell sets.
    env = {k: v for k, v in os.environ.items() if k != 'MMDET_RETINA_REGISTRY_HINTS'}
    out = subprocess.run([sys.executable, __file__, str(modules)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    changes = json.loads(out.stdout.strip().splitlines()[-1])
    kinds = {kind for _, _, kind in changes}
    not_allowed = [(key, 'changed' if existed else 'added') for key, existed, kind in changes
                   if not kind]
    assert not_allowed == [], not_allowed
    # What the import is for did happen: our names registered, mmengine's globals allowed.
    assert kinds == {'registry table', 'file backend table', 'weights-only allow-list'}
    tables = {key[1] for key, _, kind in changes if kind == 'registry table'}
    assert {'MODELS', 'TASK_UTILS', 'HOOKS', 'TRANSFORMS', 'DATASETS', 'MODEL_WRAPPERS',
            'RUNNERS'} <= tables


if __name__ == '__main__':
    _child(sys.argv[1])
