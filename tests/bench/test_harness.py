"""The benchmark harness: alternating side-by-side runs, statistics and the JSON report."""
import json

import pytest

import bench.harness as harness


def test_measure_pair_alternates_and_reports_both_sides():
    calls = []
    out = harness.measure_pair(lambda: calls.append('s'), lambda: calls.append('o'),
                               repeats=3, warmup=1)
    assert calls == ['s', 'o'] * 4  # one warm-up round, then three timed rounds
    for side in ('stock', 'ours'):
        assert set(out[side]) == {'median_s', 'min_s', 'peak_extra_mib'}
        assert 0 <= out[side]['min_s'] <= out[side]['median_s']


def test_report_writes_ratio_and_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, 'RESULTS_DIR', tmp_path)
    row = {'case': 'x', 'stock': {'median_s': 3.0, 'min_s': 2.0, 'peak_extra_mib': 1.0},
           'ours': {'median_s': 1.5, 'min_s': 1.0, 'peak_extra_mib': 0.5}}
    path = harness.report('demo_bench', [row], notes='n')
    data = json.loads(path.read_text())
    assert data['rows'][0]['ratio'] == 2.0 and data['notes'] == 'n'
    assert {'cpu', 'cores', 'torch', 'threads'} <= set(data['machine'])
    assert 'stock/ours' in capsys.readouterr().out


def test_run_all_finds_every_benchmark_and_refuses_unknown_names():
    from bench import run_all
    with pytest.raises(SystemExit) as err:
        run_all.main(['no_such_bench'])
    names = ("['assigner', 'compiled_head', 'focal_loss', 'head', 'inference', "
             "'slice_inference', 'train_step']")
    assert f'available: {names}' in str(err.value)
