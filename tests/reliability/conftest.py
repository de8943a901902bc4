"""Fixtures of the reliability tests; puts this folder on ``sys.path`` for ``rel_*`` helpers."""
import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory) -> str:
    from tiny_detector import tiny_data
    root = str(tmp_path_factory.mktemp('shapes'))
    tiny_data(root)
    return root + '/'
