"""Winograd F(4x4, 3x3) convolution: equal to the direct one, in PyTorch and ONNX Runtime."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks.conv_ws import ConvWS2d
from mmdet.apis import init_detector

from mmdet_retina_plugin.deploy import OnnxRetinaNet, export_onnx, read_metadata
from mmdet_retina_plugin.deploy.winograd import WinogradConv2d, is_winograd_eligible, winograd_convs
from mmdet_retina_plugin.models.dense_heads import RetinaNetHead
from tests.deploy.conftest import assert_raw_outputs_equal, textured_image

# (batch, in, out, height, width, padding, bias): sizes below, at and past one 4x4 tile,
# not multiples of 4, padding 0 (output smaller than input) and 2 (larger)
SHAPES = [(1, 8, 5, 1, 1, 1, True), (2, 3, 7, 4, 4, 1, False), (1, 6, 4, 9, 14, 1, True),
          (3, 5, 6, 13, 6, 0, True), (1, 4, 3, 3, 5, 0, False), (2, 7, 2, 7, 11, 2, True)]


@pytest.mark.parametrize('batch,cin,cout,height,width,padding,bias', SHAPES)
def test_equals_direct_convolution_in_float64(batch, cin, cout, height, width, padding, bias):
    # in float64 the rounding is ~1e-15: any error in the transforms or the tiling shows
    torch.manual_seed(height * 31 + width)
    conv = nn.Conv2d(cin, cout, 3, padding=padding, bias=bias).double()
    x = torch.randn(batch, cin, height, width, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(WinogradConv2d(conv)(x), conv(x), rtol=1e-10, atol=1e-10)


def test_float32_error_is_rounding_sized():
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, padding=1)
    nn.init.normal_(conv.weight, 0, 0.01)
    x = torch.randn(2, 256, 25, 38)
    with torch.no_grad():
        ref, ours = conv.double()(x.double()), WinogradConv2d(conv.float())(x)
    assert (ours.double() - ref).abs().max() < 1e-4 * ref.abs().max()


def test_gradient_free_copy_of_the_weights():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    wino = WinogradConv2d(conv)
    assert not list(wino.parameters()) and not wino.weight.requires_grad
    x = torch.randn(1, 4, 6, 6)
    before = wino(x)
    with torch.no_grad():
        conv.weight.add_(1.0)  # later changes to the source convolution are not seen
    torch.testing.assert_close(wino(x), before)


@pytest.mark.parametrize('conv', [
    nn.Conv2d(64, 64, 3, stride=2, padding=1),
    nn.Conv2d(64, 64, 3, padding=2, dilation=2),
    nn.Conv2d(64, 64, 3, padding=1, groups=2),
    nn.Conv2d(64, 64, 1),
    nn.Conv2d(64, 64, 3, padding=1, padding_mode='reflect'),
    nn.Conv2d(64, 64, 3, padding='same'),
    ConvWS2d(64, 64, 3, padding=1),  # another forward: weight standardisation
], ids=['stride2', 'dilation2', 'groups2', '1x1', 'reflect', 'same', 'conv_ws'])
def test_ineligible_convolutions_are_refused(conv):
    assert not is_winograd_eligible(conv)
    with pytest.raises(ValueError, match='plain 3x3 stride-1'):
        WinogradConv2d(conv)


def test_channel_threshold():
    assert is_winograd_eligible(nn.Conv2d(256, 720, 3, padding=1))
    assert is_winograd_eligible(nn.Conv2d(192, 192, 3, padding=1))
    assert not is_winograd_eligible(nn.Conv2d(256, 36, 3, padding=1))  # the box output
    assert not is_winograd_eligible(nn.Conv2d(128, 256, 3, padding=1))
    assert is_winograd_eligible(nn.Conv2d(128, 36, 3, padding=1), min_channels=32)


def test_head_convolutions_are_replaced_and_outputs_kept():
    torch.manual_seed(0)
    head = RetinaNetHead(num_classes=3, in_channels=64, feat_channels=64, stacked_convs=2).eval()
    head.init_weights()
    feats = [torch.randn(1, 64, s, s + 3) for s in (16, 8, 4, 2, 1)]
    with torch.no_grad():
        ref = head(feats)
        names = winograd_convs(head, min_channels=1)
        ours = head(feats)
    assert sorted(names) == ['cls_convs.0.conv', 'cls_convs.1.conv', 'reg_convs.0.conv',
                             'reg_convs.1.conv', 'retina_cls', 'retina_reg']
    assert isinstance(head.cls_convs[0], ConvModule)  # the ReLU around it is kept
    for a, b in zip(ours[0] + ours[1], ref[0] + ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dynamic_onnx_graph_equals_direct_convolution(tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 5, 3, padding=1)
    path = tmp_path / 'wino.onnx'
    with torch.no_grad():
        torch.onnx.export(WinogradConv2d(conv), (torch.randn(2, 8, 12, 20),), str(path),
                          input_names=['x'], dynamic_axes={'x': {0: 'b', 2: 'h', 3: 'w'}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for shape in [(1, 8, 7, 9), (3, 8, 33, 5), (1, 8, 1, 2)]:
        x = torch.randn(*shape)
        out = session.run(None, {'x': x.numpy()})[0]
        np.testing.assert_allclose(out, conv(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_r50_raw_outputs_with_winograd_equal_pytorch(r50_detector, tmp_path):
    # the R50 config; raw outputs through the Winograd convolutions
    out = export_onnx(r50_detector['config'], r50_detector['checkpoint'], tmp_path / 'raw.onnx',
                      postprocess=False, input_size=(192, 320))
    names = read_metadata(out)['winograd_convs']
    # ResNet-50's stride-1 3x3 convs of 256 and 512 channels (the first block of a stage
    # strides; 64 and 128 channels stay direct); FPN's 3 output convs (P6/P7 have stride 2);
    # per head branch 4 stacked convs, and the class output (720 channels) but not the box
    # output (36)
    assert sorted(names) == sorted(
        [f'backbone.layer3.{i}.conv2' for i in range(1, 6)]
        + [f'backbone.layer4.{i}.conv2' for i in range(1, 3)]
        + [f'neck.fpn_convs.{i}.conv' for i in range(3)]
        + [f'bbox_head.{b}_convs.{i}.conv' for b in ('cls', 'reg') for i in range(4)]
        + ['bbox_head.retina_cls'])
    images = [textured_image(192, 320, seed=5)]  # the test resize keeps it as it is
    raw = OnnxRetinaNet(out).raw(images)
    model = init_detector(str(r50_detector['config']), str(r50_detector['checkpoint']),
                          device='cpu')
    data = model.data_preprocessor(dict(inputs=[torch.from_numpy(images[0]).permute(2, 0, 1)]))
    with torch.no_grad():
        cls_scores, bbox_preds = model.bbox_head(model.extract_feat(data['inputs']))
    assert_raw_outputs_equal(raw, cls_scores, bbox_preds)


def test_export_without_winograd(r50_detector, tmp_path):
    out = export_onnx(r50_detector['config'], r50_detector['checkpoint'], tmp_path / 'd.onnx',
                      postprocess=False, input_size=(64, 64), winograd=False)
    assert read_metadata(out)['winograd_convs'] == []
    import onnx
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert 'Conv' in ops and 'MatMul' not in ops
