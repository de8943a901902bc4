"""``deploy.runtime`` runs exported files where torch, mmcv, mmdet and mmengine cannot be
imported, with the pre-processing of mmcv's resize calls."""
import json
import subprocess
import sys

import mmcv
import numpy as np
import pytest

from mmdet_retina_plugin.deploy import OnnxRetinaNet
from mmdet_retina_plugin.deploy.pipeline import resize_image
from tests.deploy.conftest import REPO, textured_image

# Run in a fresh interpreter from the repository root (so that it imports this checkout): a
# meta-path finder makes every import of the four packages fail as if they were not installed.
CHILD = '''
import json
import sys

BLOCKED = ('torch', 'mmcv', 'mmdet', 'mmengine')


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f'{name} imported despite the blocker')

import numpy as np

from mmdet_retina_plugin.deploy.runtime import OnnxRetinaNet

onnx_path, images_path, out_path = sys.argv[1:]
images = np.load(images_path)
results = OnnxRetinaNet(onnx_path).det([images[k] for k in sorted(images.files)])
np.savez(out_path, **{f'{i}_{key}': value for i, r in enumerate(results)
                      for key, value in r.items()})
print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in BLOCKED)))
'''


@pytest.mark.parametrize('detector', ['demo_detector', 'r50_detector'])
def test_runtime_without_torch_gives_the_same_detections(detector, request, tmp_path):
    files = request.getfixturevalue(detector)
    # resized by 1 (demo) or by keep_ratio rescaling to 320 x 192 (R50); a black image
    images = {f'{i:02d}': image for i, image in enumerate([
        textured_image(96, 224, seed=1), textured_image(150, 250, seed=2),
        np.zeros((64, 96, 3), np.uint8)])}
    np.savez(tmp_path / 'images.npz', **images)
    child = subprocess.run(
        [sys.executable, '-c', CHILD, str(files['onnx']), str(tmp_path / 'images.npz'),
         str(tmp_path / 'out.npz')], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == []
    got = np.load(tmp_path / 'out.npz')
    expected = OnnxRetinaNet(files['onnx']).det([images[k] for k in sorted(images)])
    assert len(expected[0]['scores']) > 0 and len(expected[1]['scores']) > 0
    for i, ref in enumerate(expected):
        for key, value in ref.items():
            assert got[f'{i}_{key}'].dtype == value.dtype
            np.testing.assert_array_equal(got[f'{i}_{key}'], value)


@pytest.mark.parametrize('resize', [
    dict(scale=[320, 192], scale_factor=None, keep_ratio=True),
    dict(scale=[320, 192], scale_factor=None, keep_ratio=False),
    dict(scale=None, scale_factor=0.7, keep_ratio=True),
    dict(scale=None, scale_factor=(1.3, 0.6), keep_ratio=False),
])
@pytest.mark.parametrize('interpolation, backend', [
    ('bilinear', 'cv2'), ('area', 'cv2'), ('bicubic', 'pillow'), ('nearest', 'pillow')])
@pytest.mark.parametrize('size', [(75, 133), (200, 120), (192, 320)])
def test_resize_equals_mmcv(resize, interpolation, backend, size):
    """The replay of mmdet's test ``Resize`` equals mmcv's calls, pixel for pixel."""
    image = textured_image(*size, seed=sum(size))
    resize = dict(resize, interpolation=interpolation, backend=backend)
    h, w = size
    scale = tuple(resize['scale']) if resize['scale'] else \
        mmcv.image.geometric._scale_size((w, h), resize['scale_factor'])
    call = mmcv.imrescale if resize['keep_ratio'] else mmcv.imresize
    expected = call(image, scale, interpolation=interpolation, backend=backend)
    got, (w_scale, h_scale) = resize_image(image, resize)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert (w_scale, h_scale) == (expected.shape[1] / w, expected.shape[0] / h)
