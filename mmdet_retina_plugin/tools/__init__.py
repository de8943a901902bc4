"""Command-line tools: ``python -m mmdet_retina_plugin.tools.demo``."""
