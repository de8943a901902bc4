"""Puts this folder on ``sys.path``: the head tests share ``head_pairs`` (pytest imports test
modules with ``--import-mode=importlib``, which does not add their folders)."""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
