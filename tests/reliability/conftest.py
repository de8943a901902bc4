"""Fixtures of the reliability tests; puts this folder on ``sys.path`` for ``rel_*`` helpers."""
import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory) -> str:
    from rel_tiny_cfg import make_data
    root = str(tmp_path_factory.mktemp('shapes'))
    make_data(root)
    return root + '/'
