"""The seed study of the demo comparison: statistics, wiring of seeds and detectors."""
import json
import math

import pytest

from mmdet_retina_plugin.tools import demo, demo_seeds


def _metrics(m):
    return dict(bbox_mAP=m, bbox_mAP_50=m + 0.2, bbox_mAP_s=m - 0.1, bbox_mAP_m=m,
                bbox_mAP_l=m + 0.1, train_s=1.0)


def test_summarise_means_stds_and_paired_difference():
    runs = [dict(ours=_metrics(0.5), stock=_metrics(0.4)),
            dict(ours=_metrics(0.6), stock=_metrics(0.7))]
    stats = demo_seeds.summarise(runs)
    s = stats['ours']['bbox_mAP']
    assert s['mean'] == pytest.approx(0.55) and stats['stock']['bbox_mAP']['mean'] == \
        pytest.approx(0.55)
    assert s['std'] == pytest.approx(math.sqrt(0.005))  # sample std of (0.5, 0.6)
    assert stats['stock']['bbox_mAP']['std'] == pytest.approx(math.sqrt(0.045))
    assert s['diff_mean'] == pytest.approx(0.0) and s['diff_std'] == pytest.approx(math.sqrt(0.02))
    assert s['not_below'] == 1
    assert 'diff_mean' not in stats['stock']['bbox_mAP']  # stock is the reference
    one = demo_seeds.summarise(runs[:1])['ours']['bbox_mAP_50']
    assert one['diff_mean'] == pytest.approx(0.1) and one['diff_std'] == 0.0
    alone = demo_seeds.summarise([dict(ours=_metrics(0.5))])['ours']['bbox_mAP']
    assert 'diff_mean' not in alone  # no stock run, nothing to compare with


def test_main_trains_every_detector_per_seed(tmp_path, monkeypatch):
    calls = []

    def fake_run_one(name, work_dir, data_root, quick, seed):
        calls.append((name, seed, work_dir, data_root))
        return _metrics(0.5 + seed / 100 if name == 'ours' else 0.5)

    monkeypatch.setattr(demo, 'run_one', fake_run_one)
    monkeypatch.setattr(demo, 'ensure_dataset', lambda root, quick: '/data/' + root)
    out = demo_seeds.main(['--seeds', '3', '5', '--detectors', 'ours', 'stock',
                           '--work-dir', str(tmp_path), '--data-root', 'x'])
    assert [c[:2] for c in calls] == [('ours', 3), ('stock', 3), ('ours', 5), ('stock', 5)]
    assert calls[0][2] == str(tmp_path / 'seed3' / 'ours') and calls[0][3] == '/data/x'
    saved = json.load(open(tmp_path / 'summary.json'))
    assert saved['seeds'] == [3, 5] and saved == json.loads(json.dumps(out))
    assert saved['stats']['ours']['bbox_mAP']['diff_mean'] == pytest.approx(0.04)
    assert saved['stats']['ours']['bbox_mAP']['not_below'] == 2


class _Stop(Exception):
    pass


def test_seed_reaches_the_training_config(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, work_dir, options):
        seen['options'] = list(options)
        raise _Stop

    monkeypatch.setattr(demo, 'train', fake_train)
    with pytest.raises(_Stop):
        demo.run_one('stock', str(tmp_path), str(tmp_path / 'shapes'), quick=True, seed=7)
    cfg = demo._load_cfg(demo.CONFIGS['stock'], str(tmp_path), seen['options'])
    assert cfg.randomness.seed == 7
    with pytest.raises(_Stop):
        demo.run_one('stock', str(tmp_path), str(tmp_path / 'shapes'), quick=True)
    cfg = demo._load_cfg(demo.CONFIGS['stock'], str(tmp_path), seen['options'])
    assert cfg.randomness.seed == 0  # the config's own seed
