"""Step 1 of post-processing: the block top-k of one row and of all levels at once, and the
pairs' indices in mmdet's order."""
import pytest
import torch

from mmdet_retina_plugin.models.dense_heads import retina_pair_selection as selection


@pytest.mark.parametrize('num,k', [
    (64 * 500 + 37, 100),  # block path, with a tail that fills no block
    (64 * 500, 7),  # block path, no tail
    (1000, 300),  # too few blocks: plain topk
    (50, 80),  # k above the row: all of it
])
def test_topk_rows_equals_topk(num, k):
    g = torch.Generator().manual_seed(num + k)
    logits = torch.randn(3, num, generator=g)
    logits[1, -5:] = 10.0 + torch.arange(5.0)  # the best entries of a row in its tail
    values, cols = selection.topk_rows(logits, k)
    ref_values, ref_cols = logits.topk(min(k, num), dim=1)
    assert values.shape == (3, min(k, num))
    assert torch.equal(values, ref_values)
    assert torch.equal(cols, ref_cols)  # no ties in random floats


def test_topk_rows_reads_a_strided_view():
    # channels-last logits are read as a (B, N) view whose rows are not adjacent
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 64 * 300, 3, generator=g)
    logits = base[..., 1]
    values, cols = selection.topk_rows(logits, 50)
    assert torch.equal(values, logits.topk(50, dim=1).values)
    assert torch.equal(logits.gather(1, cols), values)


def test_topk_rows_zero():
    values, cols = selection.topk_rows(torch.randn(2, 64 * 100), 0)
    assert values.shape == cols.shape == (2, 0)


def _block_topk(rows, k):
    sizes = tuple((row.size(1), 1) for row in rows)  # a row of N columns: an Nx1 map
    return selection.block_topk(rows, k, selection.level_index(sizes, 1, rows[0].device))


def test_block_topk_equals_topk_per_level():
    g = torch.Generator().manual_seed(0)
    k = 100
    nums = [64 * 500 + 37,  # blocks and a tail that fills no block
            64 * 500,  # no tail
            1000,  # fewer blocks than k: all of them
            50,  # fewer entries than k, no whole block
            64 * 3]
    rows = [torch.randn(3, n, generator=g) for n in nums]
    rows[0][1, -5:] = 10.0 + torch.arange(5.0)  # the best entries of a row in its tail
    values, cols = _block_topk(rows, k)
    assert values.shape == cols.shape == (3, len(nums), k)
    for level, row in enumerate(rows):
        ref_values, ref_cols = row.topk(min(k, row.size(1)), dim=1)
        n = ref_values.size(1)
        assert torch.equal(values[:, level, :n], ref_values)
        assert torch.equal(cols[:, level, :n], ref_cols)  # no ties in random floats
        assert torch.all(values[:, level, n:] == float('-inf'))
        assert torch.all((cols[:, level] >= 0) & (cols[:, level] < row.size(1)))


def test_block_topk_reads_a_strided_view():
    # channels-last logits are read as a (B, N) view whose rows are not adjacent
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 64 * 300, 3, generator=g)
    rows = [base[..., 1], base[:, :100, 2]]
    values, cols = _block_topk(rows, 50)
    for level, row in enumerate(rows):
        assert torch.equal(values[:, level], row.topk(50, dim=1).values)
        assert torch.equal(row.gather(1, cols[:, level]), values[:, level])


def test_block_topk_zero():
    values, cols = _block_topk([torch.randn(2, 64 * 100)], 0)
    assert values.shape == cols.shape == (2, 1, 0)


def test_levels_are_ranked_together_off_the_cpu_only():
    long_rows = [torch.empty(2, 64 * 1000 + 1, device='meta'), torch.empty(2, 5, device='meta')]
    assert selection.ranks_levels_together(long_rows, 1000)
    assert not selection.ranks_levels_together(long_rows, 1001)  # no row longer than k blocks
    assert not selection.ranks_levels_together([torch.empty(2, 64 * 1000 + 1)], 1000)  # the CPU


@pytest.mark.parametrize('together', [False, True], ids=['level-by-level', 'together'])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('k', [40, 5000])  # blocks / k above the short levels' sizes
def test_select_pairs_indexes_mmdets_order(monkeypatch, together, channels_last, k):
    monkeypatch.setattr(selection, 'ranks_levels_together', lambda rows, k: together)
    # mmdet's order of a level's pairs: permute(0, 2, 3, 1), then levels one after another
    g = torch.Generator().manual_seed(k)
    maps = [torch.randn(2, 18, h, w, generator=g) for h, w in ((40, 48), (20, 24), (3, 2))]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    flat = torch.cat([m.permute(0, 2, 3, 1).flatten(1) for m in maps], 1)
    values, pairs = selection.select_pairs(maps, k)
    real = values > float('-inf')
    assert values.shape == pairs.shape
    assert values.size(1) == (3 * k if together else sum(min(k, m[0].numel()) for m in maps))
    assert torch.equal(flat.gather(1, pairs)[real], values[real])
    expected = sum(min(k, m[0].numel()) for m in maps)
    assert torch.equal(real.sum(1), torch.full((2,), expected))
    for level, m in enumerate(maps):  # each level's best k, by value
        ref = m.flatten(1).topk(min(k, m[0].numel()), dim=1).values
        start = sum(n[0].numel() for n in maps[:level])
        mine = values.masked_fill((pairs < start) | (pairs >= start + m[0].numel()),
                                  float('-inf')).sort(1, descending=True).values
        assert torch.equal(mine[:, :ref.size(1)], ref)
