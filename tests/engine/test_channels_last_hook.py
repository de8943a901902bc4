"""RetinaChannelsLastHook: the model's 4-D weights become channels-last when a loop starts."""
from types import SimpleNamespace

import pytest
import torch
from mmdet.registry import HOOKS
from torch import nn

import mmdet_retina_plugin  # noqa: F401  (registers the hook)

CL = torch.channels_last


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize('stage', ['before_train', 'before_val', 'before_test'])
def test_converts_weights_keeping_parameters_and_values(stage):
    net = model()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    params = list(net.parameters())
    hook = HOOKS.build(dict(type='RetinaChannelsLastHook'))
    getattr(hook, stage)(SimpleNamespace(model=net))
    assert net[0].weight.is_contiguous(memory_format=CL)
    assert net[2].weight.is_contiguous(memory_format=CL)
    assert not net[0].weight.is_contiguous()  # NHWC strides, not only a 1x1 coincidence
    assert list(net.parameters()) == params  # same objects: an optimizer keeps updating them
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]), name
    getattr(hook, stage)(SimpleNamespace(model=net))  # idempotent
    assert net[0].weight.is_contiguous(memory_format=CL)


def test_unwraps_a_model_wrapper(monkeypatch):
    net = model()

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = net

    monkeypatch.setattr('mmdet_retina_plugin.engine.hooks.channels_last_hook.is_model_wrapper',
                        lambda m: isinstance(m, Wrapper))
    HOOKS.build(dict(type='RetinaChannelsLastHook')).before_train(
        SimpleNamespace(model=Wrapper()))
    assert net[0].weight.is_contiguous(memory_format=CL)
