"""configs/tiles: tiles through mmdet's pipeline and loaders; a short Runner train + sliced val."""
import pytest
from mmengine.runner import Runner

from mmdet_retina_plugin.datasets.synthetic_shapes import make_dataset
from mmdet_retina_plugin.tools.demo import _load_cfg
from mmdet_retina_plugin.tools.demo_tiles import CONFIG, QUICK_DATA, QUICK_OPTIONS, data_options


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes_large')
    # 300 x 400 images: windows of 256 px at (0|144, 0|44), 4 per image
    make_dataset(str(root), **QUICK_DATA)
    return str(root)


def load(data_root, work_dir, extra=()):
    return _load_cfg(CONFIG, str(work_dir), data_options(data_root, workers=0) + list(extra))


def test_train_loader_yields_windows_through_mmdets_pipeline(data_root, tmp_path):
    cfg = load(data_root, tmp_path, ['train_dataloader.batch_size=4'])
    assert cfg.model.type == 'RetinaSlicedDetector'
    assert cfg.model.slice_cfg.tile == cfg.train_dataloader.dataset.tile == 256
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    dataset = loader.dataset
    assert type(dataset).__name__ == 'RetinaTiledDataset'
    assert dataset.metainfo['classes'] == ('circle', 'square', 'triangle', 'cross', 'ring')
    windows = {dataset.get_data_info(i)['tile_window'] for i in range(len(dataset))}
    assert windows <= {(0, 0, 256, 256), (144, 0, 400, 256), (0, 44, 256, 300),
                       (144, 44, 400, 300)}
    batch = next(iter(loader))
    assert [tuple(img.shape) for img in batch['inputs']] == [(3, 256, 256)] * len(dataset)
    for sample in batch['data_samples']:
        assert sample.img_shape == sample.ori_shape == (256, 256)
        boxes = sample.gt_instances.bboxes.tensor.numpy()
        assert len(boxes) > 0 and (boxes >= 0).all() and (boxes <= 256).all()


def test_runner_trains_on_tiles_and_validates_on_full_images(data_root, tmp_path):
    cfg = load(data_root, tmp_path, QUICK_OPTIONS)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2  # 4 windows in batches of 2
    metrics = runner.val_loop.run()
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    # the val step predicts on the whole 300 x 400 image, boxes in its pixels beyond one tile
    (sample,) = runner.model.val_step(next(iter(runner.val_dataloader)))
    assert sample.ori_shape == sample.img_shape == (300, 400)
    boxes = sample.pred_instances.bboxes.numpy()
    assert len(boxes) > 0 and boxes[:, 2].max() > 256 and boxes[:, 3].max() > 256
    assert (boxes >= 0).all() and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 300).all()
