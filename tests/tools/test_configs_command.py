"""``mmdet-retina config``: config paths by name, from the checkout in an editable install."""
from pathlib import Path

import pytest

from mmdet_retina_plugin.tools import configs
from mmdet_retina_plugin.tools.cli import main

REPO_CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


def test_names_are_every_runnable_config_of_the_checkout():
    names = configs.config_names()
    expected = sorted(p for p in REPO_CONFIGS.rglob('*.py') if '_base_' not in p.parts)
    assert sorted(names.values()) == expected
    assert all(path.stem == name for name, path in names.items())
    assert names['retinanet_shapes'] == REPO_CONFIGS / 'demo' / 'retinanet_shapes.py'


@pytest.mark.parametrize('name', ['retina-plugin_r18_fpn_1x_coco',
                                  'retina-plugin_r18_fpn_1x_coco.py',
                                  'retinanet/retina-plugin_r18_fpn_1x_coco'])
def test_config_path_accepts_stem_suffix_and_folder(name):
    expected = REPO_CONFIGS / 'retinanet' / 'retina-plugin_r18_fpn_1x_coco.py'
    assert configs.config_path(name) == expected


@pytest.mark.parametrize('name', ['retina-plugin_r18_fpn_2x_coco',
                                  'demo/retina-plugin_r18_fpn_1x_coco',
                                  'net/retina-plugin_r18_fpn_1x_coco', '_base_/coco-ss_1x'])
def test_unknown_name_raises_listing_the_names(name):
    with pytest.raises(ValueError, match=f"name '{name}'.*retina-plugin_r18_fpn_1x_coco"):
        configs.config_path(name)


def test_cli_prints_path_or_lists(capsys):
    main(['config', 'retinanet_shapes_stock'])
    assert capsys.readouterr().out == f"{REPO_CONFIGS / 'demo' / 'retinanet_shapes_stock.py'}\n"
    main(['config'])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(configs.config_names())
    assert 'retinanet_shapes_parity' in lines[-2].split()
    with pytest.raises(SystemExit, match="name 'nope'"):
        main(['config', 'nope'])
