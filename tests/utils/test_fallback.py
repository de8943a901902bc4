"""fast_or_plain: the fast path's result; where it raises, the plain path's, one warning, and
the fast path disabled; an error the plain path shares propagates and blames nothing."""
import warnings

import pytest

from mmdet_retina_plugin.utils.fallback import fast_or_plain


class Switch:
    def __init__(self):
        self.on = True

    def off(self):
        self.on = False


def fail(message):
    def raising():
        raise RuntimeError(message)
    return raising


def test_the_fast_result_without_a_warning():
    switch = Switch()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert fast_or_plain(lambda: 1, fail('plain ran'), switch.off, 'x', 'y') == 1
    assert switch.on


def test_a_failing_fast_path_gives_the_plain_result_and_is_disabled():
    switch = Switch()
    with pytest.warns(UserWarning) as record:
        got = fast_or_plain(fail('no kernel\nfor this GPU'), lambda: 2, switch.off,
                            'Thing: the fast path', 'running slowly')
    assert got == 2 and not switch.on
    assert len(record) == 1
    # the first line of the error, and what runs instead
    assert str(record[0].message) == ('Thing: the fast path failed (RuntimeError: no kernel); '
                                      'running slowly from now on.')


def test_an_error_both_paths_raise_is_the_plain_ones_and_blames_nothing():
    switch = Switch()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(RuntimeError, match='bad input'):
            fast_or_plain(fail('fast: bad input'), fail('plain: bad input'), switch.off, 'x', 'y')
    assert switch.on
