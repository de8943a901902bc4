"""Misspelled ``type`` names: mmengine's KeyError text is kept and a hint is appended."""
import pytest
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import register_all_modules
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import Registry

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.utils.registry_hint import install_registry_hints

ORIGINAL = "RetinaNetHed is not in the mmdet::model registry. Please check whether the value of " \
           "`RetinaNetHed` is correct or it was registered as expected."


@pytest.fixture(autouse=True, scope='module')
def hints():
    register_all_modules(init_default_scope=True)
    install_registry_hints()


def test_misspelled_head_keeps_mmengine_message_and_adds_hint():
    with pytest.raises(KeyError) as err:
        MODELS.build(dict(type='RetinaNetHed'))
    msg = err.value.args[0]
    assert msg.startswith(ORIGINAL)
    assert "[hint] did you mean 'RetinaNetHead'" in msg
    listed = msg.split('mmdet_retina_plugin registers in mmdet::model: ')[1].split(', ')
    assert {'RetinaFPN', 'RetinaFocalLoss', 'RetinaNetHead'} <= set(listed)
    assert 'RetinaHead' not in listed  # mmdet's own modules are not listed as ours


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


def test_task_utils_assigner():
    with pytest.raises(KeyError, match=r"did you mean 'RetinaIoUAssigner'.*mmdet::task util: "
                                       r"RetinaIoUAssigner"):
        TASK_UTILS.build(dict(type='RetinaIouAsigner'))


def test_other_errors_and_registries_untouched():
    with pytest.raises(TypeError):  # wrong argument: not a KeyError, passes through as is
        MODELS.build(dict(type='RetinaFPN', no_such_arg=1))
    other = Registry('other')
    with pytest.raises(KeyError) as err:
        other.build(dict(type='RetinaNetHed'))
    assert '[hint]' not in err.value.args[0]
    assert install_registry_hints() == install_registry_hints()  # idempotent
    assert not hasattr(MODELS.build.__wrapped__, 'retina_hinted')  # wrapped exactly once
