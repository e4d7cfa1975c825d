"""training/graph.py --to_static: training steps and evaluation give dygraph's losses, weights and top-1 (train.py
and eval.py end to end), CINN is asked for only on a GPU whose Paddle has it, and tracing prints nothing."""
import json
import runpy

import numpy as np
import paddle
import pytest

from models import create_model
from tests.scripts import ROOT
from training import graph
from training.graph import STATIC_RUN_NOISE, to_static

PLAIN = ['--model', 'cvt_tiny', '--input_size', '32', '--epochs', '2', '--batch_size', '8', '--lr', '1e-3',
         '--no_amp', '--num_workers', '0', '--save_freq', '0', '--aa', 'none', '--reprob', '0']


def _train_steps(static: bool, steps: int = 4):
    """(per-step losses, final parameters, eval logits) of cvt_tiny with drop path, AdamW, same seeds."""
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=4, drop_path_rate=0.2)
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters())
    if static:
        model = to_static(model)
    rng = np.random.RandomState(0)
    losses = []
    model.train()
    for step in range(steps):
        images = paddle.to_tensor(rng.standard_normal((4, 3, 64, 64)).astype('float32'))
        labels = paddle.to_tensor(rng.randint(0, 4, (4,)))
        paddle.seed(100 + step)  # as training.engine seeds each step: the same drop-path draws
        loss = paddle.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    model.eval()
    with paddle.no_grad():
        logits = model(images).numpy()
    return losses, {k: v.numpy() for k, v in model.state_dict().items()}, logits


def test_static_training_steps_follow_dygraph():
    losses, weights, logits = _train_steps(static=False)
    static_losses, static_weights, static_logits = _train_steps(static=True)
    np.testing.assert_allclose(static_losses, losses, rtol=0, atol=1e-5)
    assert static_weights.keys() == weights.keys()  # the same parameter and buffer names
    for name, value in weights.items():
        np.testing.assert_allclose(static_weights[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(static_logits, logits, rtol=1e-5, atol=1e-5)
    assert (static_logits.argmax(1) == logits.argmax(1)).all()


def test_translating_and_first_runs_print_nothing(capfd):
    model = to_static(create_model('cvt_tiny', num_classes=4))
    model(paddle.randn([2, 3, 32, 32])).mean().backward()
    model.eval()
    with paddle.no_grad():
        model(paddle.randn([2, 3, 32, 32]))
    out, err = capfd.readouterr()
    noise = [line for line in (out + err).splitlines() if any(m in line for m in STATIC_RUN_NOISE)]
    if paddle.__version__.startswith('2.'):  # 2.6 logs its executor once more, at the first backward
        noise = [line for line in noise if 'Standalone Executor is Used' not in line]
    assert noise == [] and 'Warning' not in err


@pytest.mark.parametrize('cinn, gpu, backend', [(False, False, None), (True, False, None), (False, True, None),
                                                (True, True, 'CINN')])
def test_cinn_is_asked_for_only_on_a_gpu_whose_paddle_has_it(cinn, gpu, backend, monkeypatch):
    asked = []

    def spy(layer, **kwargs):
        asked.append(kwargs)
        return layer
    monkeypatch.setattr(paddle.jit, 'to_static', spy)
    monkeypatch.setattr(paddle, 'is_compiled_with_cinn', lambda: cinn)
    monkeypatch.setattr(paddle, 'is_compiled_with_cuda', lambda: gpu)
    monkeypatch.setattr(paddle, 'get_device', lambda: 'gpu:0' if gpu else 'cpu')
    graph.to_static(paddle.nn.Linear(2, 2))
    assert asked == [{'full_graph': True, 'backend': backend}]


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
    from tools.make_demo_dataset import write_digits_dataset
    root = tmp_path_factory.mktemp('digits')
    write_digits_dataset(str(root), image_size=32, num_classes=4, per_class=10)
    return root


def test_train_py_and_eval_py_to_static_follow_dygraph(digits, tmp_path, monkeypatch):
    import train
    translated = []

    def counted(model):
        translated.append(type(model).__name__)
        return to_static(model)
    monkeypatch.setattr(train, 'to_static', counted)
    monkeypatch.setattr(graph, 'to_static', counted)  # what eval.py, run afresh below, imports
    runs = {}
    for name, flags in (('dygraph', []), ('static', ['--to_static'])):
        assert train.main([str(digits), '--output', str(tmp_path), '--experiment', name, *PLAIN, *flags]) == 0
        runs[name] = [json.loads(line) for line in (tmp_path / name / 'log.txt').read_text().splitlines()]
    assert translated == ['ConvolutionalVisionTransformer']  # the static run only
    for dygraph, static in zip(runs['dygraph'], runs['static']):
        assert static['train_loss'] == pytest.approx(dygraph['train_loss'], abs=1e-5)
        assert (static['test_acc1'], static['test_acc5']) == (dygraph['test_acc1'], dygraph['test_acc5'])
        assert static['test_loss'] == pytest.approx(dygraph['test_loss'], abs=1e-5)
    weights = {name: paddle.load(str(tmp_path / name / 'checkpoint-latest.pd'))['model'] for name in runs}
    for key, value in weights['dygraph'].items():
        np.testing.assert_allclose(weights['static'][key].numpy(), value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)

    evaluate = runpy.run_path(str(ROOT / 'eval.py'))['main']
    results = {}
    for name, flags in (('dygraph', []), ('static', ['--to_static'])):
        out = tmp_path / f'{name}.json'
        assert evaluate([str(digits), '--model', 'cvt_tiny', '--resume', str(tmp_path / 'dygraph' /
                         'checkpoint-latest.pd'), '--num_workers', '0', '--output_json', str(out), *flags]) == 0
        results[name] = json.loads(out.read_text())
    assert translated == ['ConvolutionalVisionTransformer'] * 2
    assert (results['static']['acc1'], results['static']['acc5']) == (results['dygraph']['acc1'],
                                                                      results['dygraph']['acc5'])
    assert results['static']['loss'] == pytest.approx(results['dygraph']['loss'], abs=1e-5)
