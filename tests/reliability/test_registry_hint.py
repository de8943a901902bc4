"""Misspelled ``type`` names: mmengine's KeyError text is kept and a hint is appended, inside
``registry_hints()``, with ``MMDET_RETINA_REGISTRY_HINTS=1``, or from a caught error."""
import pytest
from mmdet import registry as mmdet_registry
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import register_all_modules
from mmengine import registry as mmengine_registry
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import Registry

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.utils.registry_hint import (
    HINTED_REGISTRIES,
    HINTS_ENV,
    hint_for_key_error,
    install_registry_hints_if_asked,
    registry_hints,
    uninstall_registry_hints,
)

ORIGINAL = "RetinaNetHed is not in the mmdet::model registry. Please check whether the value of " \
           "`RetinaNetHed` is correct or it was registered as expected."


@pytest.fixture(autouse=True, scope='module')
def mmdet_modules():
    register_all_modules(init_default_scope=True)


@pytest.fixture
def hints():
    with registry_hints() as wrapped:
        assert len(wrapped) == 2 * len(HINTED_REGISTRIES)  # mmdet's and mmengine's root
        yield
    assert all('build' not in vars(reg) for reg in wrapped)  # the class's build again


@pytest.mark.usefixtures('hints')
def test_misspelled_head_keeps_mmengine_message_and_adds_hint():
    with pytest.raises(KeyError) as err:
        MODELS.build(dict(type='RetinaNetHed'))
    msg = err.value.args[0]
    assert msg.startswith(ORIGINAL)
    assert "[hint] did you mean 'RetinaNetHead'" in msg
    listed = msg.split('mmdet_retina_plugin registers in mmdet::model: ')[1].split(', ')
    assert {'RetinaFPN', 'RetinaFocalLoss', 'RetinaNetHead'} <= set(listed)
    assert 'RetinaHead' not in listed  # mmdet's own modules are not listed as ours


@pytest.mark.usefixtures('hints')
def test_nested_misspelling_through_runner_registry():
    """The Runner builds through mmengine's root registry; the nested neck gets the hint once."""
    cfg = dict(type='RetinaNet', backbone=dict(type='ResNet', depth=18),
               neck=dict(type='RetinaFNP', in_channels=[64], out_channels=8, num_outs=1),
               bbox_head=dict(type='RetinaNetHead', num_classes=2, in_channels=8))
    with pytest.raises(KeyError) as err:
        ROOT_MODELS.build(cfg)
    msg = err.value.args[0]
    assert msg.startswith('RetinaFNP is not in the mmdet::model registry')
    assert msg.count('[hint]') == 1 and "did you mean 'RetinaFPN'" in msg


@pytest.mark.usefixtures('hints')
def test_task_utils_assigner():
    with pytest.raises(KeyError, match=r"did you mean 'RetinaIoUAssigner'.*mmdet::task util: "
                                       r"RetinaIoUAssigner"):
        TASK_UTILS.build(dict(type='RetinaIouAsigner'))


@pytest.mark.usefixtures('hints')
def test_other_errors_and_registries_untouched():
    with pytest.raises(TypeError):  # wrong argument: not a KeyError, passes through as is
        MODELS.build(dict(type='RetinaFPN', no_such_arg=1))
    other = Registry('other')
    with pytest.raises(KeyError) as err:
        other.build(dict(type='RetinaNetHed'))
    assert '[hint]' not in err.value.args[0]
    with registry_hints() as inner:
        assert inner == []  # already wrapped by the fixture's block: not wrapped twice
    assert not hasattr(MODELS.build.__wrapped__, 'retina_hinted')  # and still wrapped once


def test_hint_from_a_caught_error_without_any_wrapper():
    """An error path (e.g. a tool) asks for the hint itself; nothing is wrapped."""
    with pytest.raises(KeyError) as err:
        MODELS.build(dict(type='RetinaNetHed'))
    assert err.value.args[0].startswith(ORIGINAL) and '[hint]' not in err.value.args[0]
    assert hint_for_key_error(err.value).startswith(" [hint] did you mean 'RetinaNetHead'")
    assert hint_for_key_error(KeyError('something else')) == ''


def test_environment_opt_in(monkeypatch):
    monkeypatch.delenv(HINTS_ENV, raising=False)
    install_registry_hints_if_asked()
    assert 'build' not in vars(MODELS)  # not asked
    monkeypatch.setenv(HINTS_ENV, '1')
    install_registry_hints_if_asked()
    try:
        with pytest.raises(KeyError, match=r"\[hint\] did you mean 'RetinaIoUAssigner'"):
            TASK_UTILS.build(dict(type='RetinaIouAsigner'))
    finally:
        uninstall_registry_hints([getattr(module, name) for name in HINTED_REGISTRIES
                                  for module in (mmdet_registry, mmengine_registry)])
    assert 'build' not in vars(MODELS) and 'build' not in vars(ROOT_MODELS)
