"""The one error class the plugin raises for a bad argument or config value.

mmdet checks most arguments with ``assert``, so its own unit tests (``test_fpn.py``, the focal
loss's ``reduction_override`` test, ...) expect ``AssertionError``; Python code and our docs
expect ``ValueError``. ``RetinaConfigError`` is both, so either ``except`` catches it and the
message (which names the field and the allowed values) is the same.
"""


class RetinaConfigError(ValueError, AssertionError):
    """A constructor argument, config field or call option outside its allowed range.

    Raised at build time where possible; the message names the field, the value given and what
    is allowed.
    """
