"""GtReporter reports bad gts without making the host wait: CPU counts at once, device counts
once their copy has landed (at the latest at the next batch, or on flush)."""
import warnings

import pytest
import torch

from mmdet_retina_plugin.models.dense_heads.retina_gt_reporter import GtReporter, _PendingReport

METAS = [dict(img_id=7, img_path='a.jpg'), dict(img_id=8, img_path='b.jpg')]


class FakeEvent:
    """A CUDA event stand-in whose completion the test controls."""

    def __init__(self):
        self.done = False
        self.waited = False

    def query(self):
        return self.done

    def synchronize(self):
        self.waited = True
        self.done = True


def queued(reporter, counts):
    """Queues counts as a device batch would be: behind an event not yet completed."""
    event = FakeEvent()
    reporter._pending.append(_PendingReport(torch.tensor(counts), event, ('img 7', 'img 8')))
    return event


def test_cpu_counts_are_reported_at_once():
    reporter = GtReporter()
    with pytest.warns(UserWarning, match=r"1 gt box\(es\) of image 1 \(img_id=8 img_path='b"):
        reporter.submit(torch.tensor([[0, 0], [0, 1]]), METAS)
    with pytest.raises(ValueError, match=r"2 box\(es\) of image 0 \(img_id=7 img_path='a"):
        reporter.submit(torch.tensor([[2, 0], [0, 0]]), METAS)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        reporter.submit(torch.tensor([[0, 0], [0, 0]]), METAS)  # clean: silent


def test_device_counts_wait_for_their_event():
    reporter = GtReporter()
    event = queued(reporter, [[0, 0], [3, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        reporter.poll()  # copy still on its way: nothing read, nothing waited for
    assert not event.waited and len(reporter._pending) == 1
    event.done = True
    with pytest.warns(UserWarning, match=r'3 gt box\(es\) of image 0 \(img 7\)'):
        reporter.poll()
    assert not event.waited and not reporter._pending


def test_next_batch_reports_the_previous_one_first():
    reporter = GtReporter()
    event = queued(reporter, [[0, 1], [0, 0]])
    with pytest.raises(ValueError, match=r'1 box\(es\) of image 1 \(img 8\)'):
        reporter.submit(torch.tensor([[0, 0], [0, 0]]), METAS)
    assert event.waited


def test_flush_waits_and_reports_in_order():
    reporter = GtReporter()
    first = queued(reporter, [[0, 0], [1, 0]])
    second = queued(reporter, [[0, 0], [0, 2]])
    with pytest.warns(UserWarning) as record:
        reporter.flush()
    assert first.waited and second.waited and not reporter._pending
    assert ['image 0 (img 7)' in str(r.message) for r in record] == [True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_counts_reach_the_host():
    reporter = GtReporter()
    # reported at submit when the copy has already landed (poll), else at flush
    with pytest.raises(ValueError, match='image 0'):
        reporter.submit(torch.tensor([[1, 0], [0, 0]], device='cuda'), METAS)
        reporter.flush()
