"""Distributed helpers: single-process no-ops, and a real 2-process gloo all-reduce via paddle's launcher."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import paddle
import pytest

from utils import distributed as dist_utils
ROOT = Path(__file__).resolve().parents[2]


def test_single_process_defaults():
    assert dist_utils.init_distributed() == (0, 1)
    assert dist_utils.get_rank() == 0 and dist_utils.get_world_size() == 1
    assert dist_utils.is_main_process()


def test_single_process_reductions_are_identity():
    x = paddle.to_tensor([1.0, 3.0])
    assert dist_utils.all_reduce_sum(x) is x
    assert dist_utils.all_reduce_mean(x).numpy().tolist() == [1.0, 3.0]


def test_single_process_gather_returns_this_rank_only():
    assert dist_utils.all_gather_rows([1, 2.5], 'text') == [((1.0, 2.5), 'text')]


def test_weights_checksum_is_the_same_for_tensors_and_their_numpy_copies():
    layer = paddle.nn.Linear(3, 2)
    state = layer.state_dict()
    checksum = dist_utils.weights_checksum(state)
    assert checksum == dist_utils.weights_checksum({k: v.numpy() for k, v in state.items()})
    assert checksum == pytest.approx(sum(float(abs(v.numpy()).sum()) for v in state.values()))
    layer.bias.set_value(layer.bias + 1e-3)
    assert dist_utils.weights_checksum(layer.state_dict()) != checksum


def test_unwrap_model_plain_layer():
    layer = paddle.nn.Linear(2, 2)
    assert dist_utils.unwrap_model(layer) is layer


_WORKER = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, os.environ['REPO_ROOT'])
    import paddle
    from utils.distributed import (all_gather_rows, all_reduce_mean, all_reduce_sum, init_distributed,
                                   weights_agree_across_ranks)
    from training.metrics import SmoothedValue

    rank, world = init_distributed()
    total = all_reduce_sum(paddle.to_tensor([rank + 1.0, 10.0]))
    mean = all_reduce_mean(paddle.to_tensor([rank * 2.0]))
    meter = SmoothedValue()
    meter.update(paddle.to_tensor(float(rank)), n=rank + 1)  # rank 0: 0 x1, rank 1: 1 x2
    meter.synchronize_between_processes()
    rows = all_gather_rows([rank, 2 ** 53 - rank, 0.1 * rank], 'rank %d in /ŝhared/' % rank + 'x' * 2000 * rank)
    layer = paddle.nn.Linear(2, 1)
    layer.weight.set_value(paddle.full([2, 1], 0.5))
    layer.bias.set_value(paddle.full([1], -1.0))
    same = weights_agree_across_ranks(layer)
    layer.bias.set_value(paddle.full([1], -1.0 - rank))
    apart = weights_agree_across_ranks(layer)
    result = dict(rank=rank, world=world, total=total.numpy().tolist(), mean=mean.numpy().tolist(),
                  count=meter.count, global_avg=meter.global_avg, rows=rows, same=same, apart=apart)
    with open(os.path.join(os.environ['RESULT_DIR'], f'rank{rank}.json'), 'w') as f:
        json.dump(result, f)
''')


@pytest.mark.slow
@pytest.mark.skipif(paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() < 2,
                    reason='a CUDA build of paddle launches one worker per GPU; this needs 2 GPUs or a CPU build')
def test_two_process_all_reduce(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER)
    env = dict(os.environ, REPO_ROOT=str(ROOT), RESULT_DIR=str(tmp_path), OMP_NUM_THREADS='1')
    env.pop('CUDA_VISIBLE_DEVICES', None)  # the launcher reads its mere presence as "GPU job"
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'logs'), str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    logs = ''.join(p.read_text() for p in sorted((tmp_path / 'logs').glob('*')) if p.is_file())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-3000:]
    results = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res['rank'] == r and res['world'] == 2
        assert res['total'] == [3.0, 20.0]
        assert res['mean'] == [1.0]
        assert res['count'] == 3 and res['global_avg'] == pytest.approx(2 / 3)
        # every rank gets every rank's row: numbers exact in float64, text cut to TEXT_BYTES
        cut = ('rank 1 in /ŝhared/' + 'x' * 2000)[:dist_utils.TEXT_BYTES - 1]  # ŝ is 2 bytes
        assert res['rows'] == [[[0.0, 2.0 ** 53, 0.0], 'rank 0 in /ŝhared/'], [[1.0, 2.0 ** 53 - 1, 0.1], cut]]
        assert res['same'] == [True, 2.0] and res['apart'] == [False, 2.0 + r]  # (agree, this rank's sum of |w|)
