"""Batch samplers: per-epoch shuffling, rank sharding, resume, DeiT repeated augmentation, eval coverage."""
import pytest

from datasets.samplers import DistributedEvalSampler, DistributedTrainSampler, RepeatedAugSampler


def _indices(sampler):
    """Batches of plain indices; train samplers pair each index with its augmentation seed."""
    return [[i[0] if isinstance(i, tuple) else i for i in batch] for batch in sampler]


def _flat(sampler):
    return [i for batch in _indices(sampler) for i in batch]


def test_train_sampler_ranks_partition_a_padded_permutation():
    samplers = [DistributedTrainSampler(10, 2, num_replicas=3, rank=r, seed=5) for r in range(3)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [_flat(s) for s in samplers]
    assert all(len(p) == 4 for p in per_rank)  # ceil(10 / 3) = 4 samples, 2 batches each
    interleaved = [per_rank[r][k] for k in range(4) for r in range(3)]
    assert sorted(interleaved[:10]) == list(range(10))
    assert interleaved[10:] == interleaved[:2]  # padding repeats the start of the permutation
    assert len(samplers[0]) == 2


def test_train_sampler_order_depends_on_seed_and_epoch_only():
    a, b = DistributedTrainSampler(50, 5, seed=1), DistributedTrainSampler(50, 5, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(a) != list(DistributedTrainSampler(50, 5, seed=2))
    assert sorted(_flat(a)) == list(range(50))


def test_train_sampler_drop_last_and_no_shuffle():
    s = DistributedTrainSampler(11, 4, shuffle=False)
    assert _indices(s) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    s = DistributedTrainSampler(11, 4, shuffle=False, drop_last=False)
    assert _indices(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_resume_continues_the_same_epoch_order():
    s = DistributedTrainSampler(40, 4, num_replicas=2, rank=1, seed=7)
    s.set_epoch(5)
    full = _indices(s)
    s.set_start_batch(3)
    assert len(s) == 2 and s.num_batches == 5
    assert _indices(s) == full[3:]
    s.set_epoch(6)
    assert len(s) == 5  # a new epoch starts at its first batch
    with pytest.raises(ValueError, match=r'start_batch: expected 0\.\.5 \(batches per epoch\), found 6'):
        s.set_start_batch(6)


def test_repeated_aug_pins_deit_order():
    # 12 samples, 2 ranks, 3 repeats, no shuffle: [0,0,0,1,1,1,...] strided by rank, cut to 12 / 2.
    ranks = [RepeatedAugSampler(12, 3, num_replicas=2, rank=r, shuffle=False, selected_round=0) for r in range(2)]
    assert _indices(ranks[0]) == [[0, 0, 1], [2, 2, 3]]
    assert _indices(ranks[1]) == [[0, 1, 1], [2, 3, 3]]


def test_repeated_aug_copies_go_to_different_ranks():
    ranks = [RepeatedAugSampler(30, 2, num_replicas=3, rank=r, seed=3, selected_round=0) for r in range(3)]
    for s in ranks:
        s.set_epoch(1)
    per_rank = [_flat(s) for s in ranks]
    assert all(len(p) == 10 for p in per_rank)
    for k in range(10):  # position k on every rank holds the 3 copies of one image
        assert len({p[k] for p in per_rank}) == 1
    assert len(set(per_rank[0])) == 10


def test_repeated_aug_deit_sample_count():
    # DeiT: floor(N // 256 * 256 / world) samples per rank; ImageNet train on 8 GPUs.
    s = RepeatedAugSampler(1_281_167, 128, num_replicas=8, rank=0)
    assert s.num_batches == 160_128 // 128
    small = RepeatedAugSampler(100, 10, num_replicas=2, rank=0)  # smaller than one 256-round
    assert small.num_batches == 5


@pytest.mark.parametrize('n, world', [(1, 1), (7, 2), (10, 3), (16, 4), (5, 8), (1001, 8)])
def test_eval_sampler_covers_each_index_once(n, world):
    seen = [i for r in range(world) for i in _flat(DistributedEvalSampler(n, 3, num_replicas=world, rank=r))]
    assert seen == list(range(n))


def test_eval_sampler_keeps_the_last_partial_batch():
    assert list(DistributedEvalSampler(7, 3)) == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize('kwargs, message', [
    (dict(dataset_len=0, batch_size=2), 'dataset_len: expected a positive number of samples, found 0'),
    (dict(dataset_len=4, batch_size=0), 'batch_size: expected a positive integer, found 0'),
    (dict(dataset_len=4, batch_size=2, num_replicas=2, rank=2), 'expected 0 <= rank < num_replicas, found 2/2'),
])
def test_sampler_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistributedTrainSampler(**kwargs)


def test_permutation_is_pinned():
    # The epoch order must not change between numpy versions, or resumed runs would see other samples.
    s = DistributedTrainSampler(8, 8, seed=0)
    s.set_epoch(1)
    assert _indices(s) == [[7, 2, 1, 6, 0, 4, 3, 5]]  # np.random.RandomState(0 + 1).permutation(8)


def test_train_samplers_pair_indices_with_position_seeds():
    s = DistributedTrainSampler(10, 4, num_replicas=2, rank=1, seed=3)
    s.set_epoch(2)
    batches = list(s)
    seeds = [seed for batch in batches for _, seed in batch]
    assert len(set(seeds)) == len(seeds) == 4
    s.set_start_batch(1)
    assert list(s) == batches[1:]  # a resumed epoch keeps each position's seed
    assert all(isinstance(i, int) for batch in DistributedEvalSampler(10, 4) for i in batch)


@pytest.mark.parametrize('sampler_cls', [DistributedTrainSampler, RepeatedAugSampler])
def test_whole_groups_of_keeps_only_whole_accumulation_groups(sampler_cls):
    plain = sampler_cls(22, 2, num_replicas=1, rank=0, seed=1)
    grouped = sampler_cls(22, 2, num_replicas=1, rank=0, seed=1, whole_groups_of=3)
    assert plain.num_batches == 11 and grouped.num_batches == 9
    assert list(grouped) == list(plain)[:9]  # same order, the 2 trailing micro-batches left out
    grouped.set_start_batch(6)
    assert len(grouped) == 3 and list(grouped) == list(plain)[6:9]
    with pytest.raises(ValueError, match='whole_groups_of: expected a positive integer, found 0'):
        sampler_cls(22, 2, whole_groups_of=0)
