"""``python -m mmdet_retina_plugin.tools.zoo_sweep``: see the package's docstring."""
import sys

from .sweep import main

sys.exit(main())
