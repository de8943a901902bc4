"""fold_frozen_bn: frozen norms folded into the convolutions before them, outputs unchanged,
and only where the convolution's output is what the norm normalises."""
import pytest
import torch
from mmcv.cnn import ConvModule
from mmdet.models.backbones import ResNet
from torch import nn

from mmdet_retina_plugin.models.layers import RetinaFrozenBN, fold_frozen_bn

CL = torch.channels_last


def randomise_norms(model: nn.Module) -> nn.Module:
    """Random statistics and affine in every norm, so that a fold that drops a term shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def resnet18(norm_type: str = 'RetinaFrozenBN', **kwargs) -> ResNet:
    model = ResNet(depth=18, out_indices=(0, 1, 2, 3), norm_eval=True,
                   norm_cfg=dict(type=norm_type, requires_grad=False), **kwargs)
    randomise_norms(model)
    model.eval()
    return model


def frozen_norms(model: nn.Module) -> int:
    return sum(isinstance(m, RetinaFrozenBN) for m in model.modules())


@pytest.mark.parametrize('channels_last', [False, True])
def test_resnet_folds_every_norm_and_computes_the_same(channels_last):
    model = resnet18()
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        model.to(memory_format=CL)
        x = x.contiguous(memory_format=CL)
    with torch.no_grad():
        want = model(x)
        assert fold_frozen_bn(model) == 20  # stem, 8 blocks x 2, 3 downsamples
        got = model(x)
    assert frozen_norms(model) == 0
    assert isinstance(model.layer2[0].bn1, nn.Identity)
    conv = model.layer2[0].downsample[0]
    assert conv.bias is not None and conv.weight.requires_grad and conv.bias.requires_grad
    assert conv.weight.is_contiguous(memory_format=CL if channels_last
                                     else torch.contiguous_format)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_conv_bias_is_scaled_and_shifted():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    norm = randomise_norms(RetinaFrozenBN(4))
    model = nn.Sequential(conv, norm)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
        assert fold_frozen_bn(model) == 1
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    assert isinstance(model[1], nn.Identity)


def test_what_is_not_the_convs_output_is_left_alone():
    """Batch norms that train (not frozen), a weight-standardised conv (its forward rescales
    the weights), a norm-first ConvModule, a norm of other channels, a norm after a
    non-conv: none is folded, every output as before."""
    cases = [
        resnet18('BN'),
        resnet18(conv_cfg=dict(type='ConvWS')),
        ConvModule(4, 4, 3, padding=1, norm_cfg=dict(type='RetinaFrozenBN'),
                   order=('norm', 'conv', 'act')),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), RetinaFrozenBN(4)),
    ]
    for model in cases:
        randomise_norms(model)
        model.eval()
        x = torch.randn(1, 3 if isinstance(model, ResNet) else 4, 32, 32)
        with torch.no_grad():
            want = model(x)
            norms = frozen_norms(model)
            assert fold_frozen_bn(model) == 0, type(model).__name__
            got = model(x)
        assert frozen_norms(model) == norms
        for a, b in zip(got if isinstance(got, tuple) else [got],
                        want if isinstance(want, tuple) else [want]):
            assert torch.equal(a, b)
