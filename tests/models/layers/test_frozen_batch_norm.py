"""RetinaFrozenBN: equal to nn.BatchNorm2d in eval mode, loads its state strictly, builds in
mmdet's ResNet under BN's names, and is a batch norm to the tools that look for one."""
import pytest
import torch
from mmcv.cnn import build_norm_layer, fuse_conv_bn
from mmdet.models.backbones import ResNet
from mmengine.optim import build_optim_wrapper
from torch import nn

from mmdet_retina_plugin.models.layers import RetinaFrozenBN

CL = torch.channels_last


def random_bn(channels: int = 8, seed: int = 0) -> nn.BatchNorm2d:
    """An eval-mode BN with random statistics and affine (variances in [0.1, 2.1))."""
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=gen))
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) * 2 + 0.1)
        bn.num_batches_tracked.fill_(7)
    return bn.eval()


def frozen_like(bn: nn.BatchNorm2d) -> RetinaFrozenBN:
    frozen = RetinaFrozenBN(bn.num_features, eps=bn.eps)
    frozen.load_state_dict(bn.state_dict(), strict=True)
    return frozen


def test_state_dict_is_batch_norms_both_ways():
    bn = random_bn()
    frozen = frozen_like(bn)
    assert list(frozen.state_dict()) == list(bn.state_dict())
    assert [n for n, _ in frozen.named_parameters()] == ['weight', 'bias']
    back = nn.BatchNorm2d(8)
    back.load_state_dict(frozen.state_dict(), strict=True)
    for name, value in bn.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    no_affine = RetinaFrozenBN(8, affine=False)
    assert list(no_affine.state_dict()) == list(nn.BatchNorm2d(8, affine=False).state_dict())


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('training', [False, True])
def test_equals_eval_batch_norm_fp32(channels_last, training):
    bn = random_bn()
    frozen = frozen_like(bn).train(training)
    x = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(1)) * 3
    if channels_last:
        x = x.contiguous(memory_format=CL)
    y = frozen(x)
    torch.testing.assert_close(y, bn(x), rtol=1e-5, atol=1e-5)
    assert y.dtype == torch.float32
    assert y.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    # frozen in training mode too: the statistics never move
    assert torch.equal(frozen.running_mean, bn.running_mean)
    assert frozen.num_batches_tracked.item() == 7


@pytest.mark.parametrize('channels_last', [False, True])
def test_bf16_input_stays_bf16_and_matches(channels_last):
    bn = random_bn()
    frozen = frozen_like(bn)
    x = (torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(2)) * 3).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=CL)
    y = frozen(x)
    assert y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    # the fp32 BN of the same (bf16-rounded) input, to bf16's rounding of scale, shift and y
    torch.testing.assert_close(y.float(), bn(x.float()), rtol=2e-2, atol=5e-2)


def test_under_cpu_autocast_bf16_the_conv_output_dtype_is_kept():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    frozen = frozen_like(random_bn())
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=CL)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = frozen(conv(x))
    assert y.dtype == torch.bfloat16


def test_frozen_backward_is_the_scale_only():
    bn = random_bn()
    _, frozen = build_norm_layer(dict(type='RetinaFrozenBN', requires_grad=False), 8)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    grad_out = torch.randn(2, 8, 4, 4)
    frozen(x).backward(grad_out)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(x.grad, grad_out * scale.view(1, -1, 1, 1))
    assert frozen.weight.grad is None and frozen.bias.grad is None


def test_trainable_affine_gets_batch_norms_gradients():
    bn = random_bn()
    frozen = frozen_like(bn)  # requires_grad=True: weight and bias train
    x = torch.randn(2, 8, 4, 4)
    grad_out = torch.randn(2, 8, 4, 4)
    frozen(x).backward(grad_out)
    bn(x).backward(grad_out)
    torch.testing.assert_close(frozen.weight.grad, bn.weight.grad)
    torch.testing.assert_close(frozen.bias.grad, bn.bias.grad)


def test_reused_affine_follows_state_changes():
    frozen = frozen_like(random_bn(seed=0))
    x = torch.randn(2, 8, 3, 3)
    frozen.requires_grad_(False)
    with torch.inference_mode():
        frozen(x)  # an inference-mode affine must not be reused where autograd saves it
    other = random_bn(seed=3)
    frozen.load_state_dict(other.state_dict())  # in-place copies: same storage, new version
    torch.testing.assert_close(frozen(x), other(x), rtol=1e-5, atol=1e-5)
    x.requires_grad_()
    frozen(x).sum().backward()
    torch.testing.assert_close(x.grad, (other.weight / torch.sqrt(other.running_var + 1e-5))
                               .view(1, -1, 1, 1).expand_as(x))


def test_reused_affine_follows_replaced_tensors():
    frozen = frozen_like(random_bn()).requires_grad_(False)
    x = torch.randn(2, 8, 3, 3)
    frozen(x)
    frozen.running_var = torch.full((8,), 4.0)  # a new buffer tensor, version 0
    frozen.weight.data = torch.full((8,), 2.0)  # new storage behind the same Parameter
    expected = (x - frozen.running_mean.view(1, -1, 1, 1)) + frozen.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():  # state made in inference mode has no version counter
        made_there = frozen_like(random_bn())
        torch.testing.assert_close(made_there(x), random_bn()(x), rtol=1e-5, atol=1e-5)


def test_reused_affine_follows_the_input_rank():
    """The cached affine is shaped for the input's rank: (N, C), (N, C, L) and (N, C, H, W) in
    turn, as BN's 1-d and 2-d forms compute them."""
    bn = random_bn()
    frozen = frozen_like(bn).requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    expected_1d = nn.BatchNorm1d(8).eval()
    expected_1d.load_state_dict(bn.state_dict())
    for shape in ((4, 8, 5, 3), (4, 8), (4, 8, 5), (4, 8, 5, 3)):
        x = torch.randn(*shape, generator=gen)
        reference = bn(x) if x.dim() == 4 else expected_1d(x)
        torch.testing.assert_close(frozen(x), reference, rtol=1e-5, atol=1e-5)


def test_build_norm_layer_names_it_like_bn():
    name, layer = build_norm_layer(dict(type='RetinaFrozenBN', requires_grad=False), 16,
                                   postfix=1)
    assert name == 'bn1' and isinstance(layer, RetinaFrozenBN)
    assert layer.eps == 1e-5 and not any(p.requires_grad for p in layer.parameters())


@pytest.mark.parametrize('kwargs, field', [
    (dict(num_features=0), 'num_features'), (dict(num_features=8, eps=0.0), 'eps'),
    (dict(num_features=8, momentum=1.5), 'momentum'), (dict(num_features=8, affine=1), 'affine'),
    (dict(num_features=8, track_running_stats=False), 'track_running_stats')])
def test_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RetinaFrozenBN(**kwargs)
    with pytest.raises(ValueError, match='expected input'):
        RetinaFrozenBN(8)(torch.zeros(1, 4, 2, 2))


def resnet(norm_type: str, requires_grad: bool = False) -> ResNet:
    return ResNet(depth=18, out_indices=(0, 1, 2, 3), frozen_stages=1, norm_eval=True,
                  norm_cfg=dict(type=norm_type, requires_grad=requires_grad), style='pytorch')


def stock_and_ours(requires_grad: bool = False) -> tuple[ResNet, ResNet]:
    """mmdet ResNet-18s with BN and with ours, stock's statistics and affine random."""
    torch.manual_seed(0)
    stock = resnet('BN', requires_grad)
    with torch.no_grad():
        for m in stock.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return stock, resnet('RetinaFrozenBN', requires_grad)


def test_mmdet_resnet_loads_stock_state_strictly_and_computes_the_same():
    """A ResNet-18 with random BN statistics: ours loads stock's state dict strictly (same
    names) and, in training mode under norm_eval, gives stock's features."""
    stock, ours = stock_and_ours()
    assert list(ours.state_dict()) == list(stock.state_dict())
    assert isinstance(ours.layer1[0].bn1, RetinaFrozenBN) and isinstance(ours.norm1,
                                                                          RetinaFrozenBN)
    ours.load_state_dict(stock.state_dict(), strict=True)
    stock.train()  # norm_eval puts stock's BN in eval mode; ours is frozen in any mode
    ours.train()
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(ours(x), stock(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    ours.to(memory_format=CL)
    for a, b in zip(ours(x.contiguous(memory_format=CL)), stock(x)):
        assert a.is_contiguous(memory_format=CL)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('requires_grad', [False, True])
def test_compiles_whole_frozen_or_trained(requires_grad):
    """``torch.compile(fullgraph=True)`` (``RetinaCompileHook``'s default) of a frozen norm,
    with and without gradients: no graph break, BN's values."""
    bn = random_bn()
    frozen = frozen_like(bn).requires_grad_(requires_grad)
    compiled = torch.compile(frozen, fullgraph=True, backend='eager')
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(compiled(x), bn(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), bn(x), rtol=1e-5, atol=1e-5)


def test_norm_decay_mult_applies_to_it_as_to_batch_norm():
    """mmengine's optimizer constructor finds norms by class: ``paramwise_cfg``'s
    ``norm_decay_mult`` (mmdet's RetinaNet configs on NAS-FPN, EfficientNet and RSB backbones
    set it to 0) gives ours stock's weight decay, parameter by parameter."""
    def decays(model: nn.Module) -> dict:
        wrapper = build_optim_wrapper(model, dict(
            optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
            paramwise_cfg=dict(norm_decay_mult=0.0)))
        by_param = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups
                    for p in g['params']}
        return {name: by_param[id(p)] for name, p in model.named_parameters()
                if id(p) in by_param}  # not the frozen stage's

    stock, ours = stock_and_ours(requires_grad=True)
    want = decays(stock)
    assert want['layer2.0.bn1.weight'] == 0.0 and want['layer2.0.conv1.weight'] == 1e-4
    assert decays(ours) == want


def test_mmcv_fuse_conv_bn_folds_it_into_the_conv():
    """mmcv's ``fuse_conv_bn`` (mmdet's inference benchmark's ``--fuse-conv-bn``) folds ours
    into the conv before it, as it folds BN: no norm left, the same features."""
    stock, ours = stock_and_ours()
    ours.load_state_dict(stock.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ours(x)
        fused = fuse_conv_bn(ours)
        got = fused(x)
    assert not any(isinstance(m, RetinaFrozenBN) for m in fused.modules())
    assert isinstance(fused.layer2[0].bn1, nn.Identity)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_built_with_batch_norms_device_and_dtype_and_converted_like_it():
    frozen = RetinaFrozenBN(8, device='cpu', dtype=torch.float64)
    bn = nn.BatchNorm2d(8, device='cpu', dtype=torch.float64)
    for name, value in bn.state_dict().items():
        got = frozen.state_dict()[name]
        assert got.dtype == value.dtype and torch.equal(got, value), name
    # convert_sync_batchnorm (mmengine's sync_bn='torch') turns it into a SyncBatchNorm, as BN
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(frozen_like(random_bn())))[0]
    assert type(synced) is nn.SyncBatchNorm
    for name, value in random_bn().state_dict().items():
        assert torch.equal(synced.state_dict()[name], value), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_on_cuda_equals_cudnn_eval_batch_norm_channels_last(dtype):
    bn = random_bn().cuda()
    frozen = frozen_like(bn).cuda()
    x = (torch.randn(4, 8, 16, 16, device='cuda') * 3).to(dtype).contiguous(memory_format=CL)
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y, expected = frozen(x), bn(x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(y.float(), expected.float(), **tol)
