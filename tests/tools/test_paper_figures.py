"""Figure 1 and the prior table against closed forms computed here with ``math``."""
import math

import pytest
import torch

from mmdet_retina_plugin.tools import paper_figures as pf


def test_figure1_curves_match_the_formula(tmp_path):
    path = tmp_path / 'fig1.png'
    curves = pf.plot_figure1(path, num_points=50)
    assert sorted(curves) == [0.0, 0.5, 1.0, 2.0, 5.0]
    assert 1000 < path.stat().st_size < 150_000
    p_t = torch.tensor([0.05, 0.3, 0.5, 0.9, 0.99], dtype=torch.float64)
    points = pf.focal_loss_curves(p_t)
    for gamma, loss in points.items():
        # FL(p_t) = -(1 - p_t)^gamma * log(p_t); gamma = 0 is plain cross-entropy
        expected = [-((1 - p) ** gamma) * math.log(p) for p in p_t.tolist()]
        assert loss.tolist() == pytest.approx(expected, rel=1e-6)


def _closed_form(prior, n):
    # BCE of 1 positive (-log p) and n negatives (-log(1 - p)), all predicting p = prior
    return -math.log(prior) - n * math.log(1 - prior)


def test_prior_table_matches_closed_form():
    table = pf.prior_table()
    assert table['negatives'] == [10, 100, 1000, 10000]
    # the heads were really initialised: sigmoid(retina_cls.bias) is the prior
    assert table['p_init']['0.01'] == pytest.approx(0.01, rel=1e-6)
    assert table['p_init']['0.5'] == pytest.approx(0.5, rel=1e-9)
    for i, n in enumerate(table['negatives']):
        low, high = _closed_form(0.01, n), _closed_form(0.5, n)
        assert table['loss_prior_0.01'][i] == pytest.approx(low, rel=1e-6)
        assert table['loss_prior_0.5'][i] == pytest.approx(high, rel=1e-6)
        assert table['ratio'][i] == pytest.approx(high / low, rel=1e-6)
    # the values of the README's prior table, to 3 decimals
    assert [round(x, 3) for x in table['loss_prior_0.01']] == [4.706, 5.61, 14.656, 105.109]
    assert [round(x, 3) for x in table['loss_prior_0.5']] == [7.625, 70.008, 693.84, 6932.165]


def test_figures_cli_writes_outputs(tmp_path, capsys):
    from mmdet_retina_plugin.tools.cli import main
    main(['figures', '--out', str(tmp_path)])
    text = capsys.readouterr().out
    assert '| 10,000 | 105.109 / 104.605 | 6932.165 / 6930.693 | 65.95 / 66.26 |' in text
    assert (tmp_path / 'figure1_focal_loss.png').exists()
    assert (tmp_path / 'prior_table.json').exists()
    assert '-log(1 - 0.01) = 0.0100503 to 0.01' in (tmp_path / 'prior_table.md').read_text()
