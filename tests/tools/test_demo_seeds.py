"""The seed study of the demo comparison: statistics, wiring of seeds into the runs."""
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
    s = demo_seeds.summarise(runs)['bbox_mAP']
    assert s['ours_mean'] == pytest.approx(0.55) and s['stock_mean'] == pytest.approx(0.55)
    assert s['ours_std'] == pytest.approx(math.sqrt(0.005))  # sample std of (0.5, 0.6)
    assert s['stock_std'] == pytest.approx(math.sqrt(0.045))
    assert s['diff_mean'] == pytest.approx(0.0) and s['diff_std'] == pytest.approx(math.sqrt(0.02))
    assert s['ours_not_below'] == 1
    one = demo_seeds.summarise(runs[:1])['bbox_mAP_50']
    assert one['diff_mean'] == pytest.approx(0.1) and one['diff_std'] == 0.0


def test_main_runs_one_comparison_per_seed(tmp_path, monkeypatch):
    calls = []

    def fake_demo(argv):
        calls.append(argv)
        seed = int(argv[argv.index('--seed') + 1])
        return dict(results=[dict(name='ours', **_metrics(0.5 + seed / 100)),
                             dict(name='stock', **_metrics(0.5))])

    monkeypatch.setattr(demo, 'main', fake_demo)
    out = demo_seeds.main(['--seeds', '3', '5', '--work-dir', str(tmp_path)])
    assert [c[:3] for c in calls] == [['--compare', '--seed', '3'], ['--compare', '--seed', '5']]
    assert [c[c.index('--work-dir') + 1] for c in calls] == [str(tmp_path / 'seed3'),
                                                           str(tmp_path / 'seed5')]
    saved = json.load(open(tmp_path / 'summary.json'))
    assert saved['seeds'] == [3, 5] and saved == json.loads(json.dumps(out))
    assert saved['stats']['bbox_mAP']['diff_mean'] == pytest.approx(0.04)
    assert saved['stats']['bbox_mAP']['ours_not_below'] == 2


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
