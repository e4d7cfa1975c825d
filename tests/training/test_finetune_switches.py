"""--freeze_stages and --bn_eval: frozen parameters bit-identical and without optimizer state after training,
BatchNorm running statistics unchanged across model.train() calls, the rest trained; resume with the same and
with other switches."""
import numpy as np
import paddle
import pytest

from models import create_model
from training.checkpoint import CheckpointManager, TrainingCheckpoint, load_training_state, optimizer_state_by_name
from training.finetune import apply_finetune_switches
from training.optim import build_optimizer


def _model(freeze_stages=0, bn_eval=False):
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=4)
    apply_finetune_switches(model, freeze_stages=freeze_stages, bn_eval=bn_eval)
    return model


def _snapshot(model):
    return {n: v.numpy().copy() for n, v in model.state_dict().items()}


def _train_steps(model, optimizer, steps=3):
    for seed in range(steps):
        model.eval()  # as the epoch loop does after evaluating: model.train() must not undo the switches
        model.train()
        paddle.seed(seed)
        loss = (model(paddle.randn([4, 3, 32, 32])) * paddle.randn([4, 4])).sum()
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()


def _changed(before, after, names):
    return {n for n in names if not np.array_equal(before[n], after[n])}


def _running_stats(model, prefix=''):
    return [n for n in model.state_dict() if n.startswith(prefix) and n.endswith(('._mean', '._variance'))]


def _trained_without_freezing():
    model = _model()
    optimizer = build_optimizer(model, opt='adamw', lr=1e-2)
    before = _snapshot(model)
    _train_steps(model, optimizer)
    return _changed(before, _snapshot(model), before)


@pytest.mark.parametrize('frozen', [1, 2, 3])
def test_frozen_stages_stay_bit_identical_with_no_optimizer_state(frozen):
    model = _model(freeze_stages=frozen)
    optimizer = build_optimizer(model, opt='adamw', lr=1e-2)
    before = _snapshot(model)
    _train_steps(model, optimizer)
    after = _snapshot(model)
    frozen_names = [n for n in before if n.startswith(tuple(f'stage{i}.' for i in range(frozen)))]
    trained_names = [n for n, p in model.named_parameters() if not p.stop_gradient]
    moving = _trained_without_freezing()
    assert set(frozen_names) & moving  # the same steps change them when they are not frozen
    assert not _changed(before, after, frozen_names)  # weights and running statistics alike
    # every other parameter trains as it would unfrozen (stage 3's spatial query projection of the last block
    # gets no gradient in any run: the head reads only the cls token)
    assert _changed(before, after, trained_names) == moving & set(trained_names)
    assert not any(n.startswith(('stage0.', 'stage1.', 'stage2.')[:frozen]) for n in trained_names)
    state = optimizer_state_by_name(optimizer, model)
    owners = {key.split('@')[0] for key in state if '@' in key}
    assert owners == set(trained_names)  # frozen parameters have no moments at all
    if frozen < 3:  # a stage that trains still updates its BatchNorm statistics (no --bn_eval)
        assert _changed(before, after, _running_stats(model, f'stage{frozen}.'))


def test_bn_eval_keeps_every_running_statistic_and_still_trains_the_affine_weights():
    model = _model(bn_eval=True)
    optimizer = build_optimizer(model, opt='sgd', lr=1e-2)
    before = _snapshot(model)
    _train_steps(model, optimizer)
    after = _snapshot(model)
    stats = _running_stats(model)
    assert len(stats) == 2 * 3 * 3  # q, k, v projection BatchNorms of one block in each of 3 stages
    assert not _changed(before, after, stats)
    assert _changed(before, after, [n for n in before if n.endswith('.bn.weight')])
    # in training mode it normalises as in eval mode: with the running statistics
    bn = model.stage1.blocks[0].attn.conv_proj_k.bn
    x = paddle.randn([4, bn.weight.shape[0], 5, 5])
    model.train()
    in_training = bn(x).numpy()
    model.eval()
    np.testing.assert_array_equal(in_training, bn(x).numpy())


def test_off_by_default_batch_statistics_move():
    model = _model()
    optimizer = build_optimizer(model, opt='sgd', lr=1e-2)
    before = _snapshot(model)
    _train_steps(model, optimizer)
    assert _changed(before, _snapshot(model), _running_stats(model)) == set(_running_stats(model))


def test_freeze_stages_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r'freeze_stages: expected 0\.\.3 .* got 4'):
        _model(freeze_stages=4)


def _checkpoint(tmp_path, model, optimizer, freeze_stages):
    return TrainingCheckpoint(CheckpointManager(str(tmp_path)), model=model, optimizer=optimizer,
                              args={'freeze_stages': freeze_stages})


def test_resume_with_the_same_freeze_continues_and_another_is_refused(tmp_path):
    model = _model(freeze_stages=1)
    optimizer = build_optimizer(model, opt='adamw', lr=1e-2)
    _train_steps(model, optimizer, steps=2)
    path = _checkpoint(tmp_path, model, optimizer, 1).save_latest({'epoch': 1, 'step_in_epoch': 0, 'global_step': 2})
    ckpt = load_training_state(path)

    same = _model(freeze_stages=1)
    same_optimizer = build_optimizer(same, opt='adamw', lr=1e-2)
    _checkpoint(tmp_path, same, same_optimizer, 1).load_state_dict(dict(ckpt, optimizer=dict(ckpt['optimizer'])), path)
    _train_steps(same, same_optimizer, steps=1)  # Paddle asserts at the first update if a moment is missing
    _train_steps(model, optimizer, steps=1)
    for name, value in _snapshot(model).items():  # the same third update as the uninterrupted run
        np.testing.assert_allclose(same.state_dict()[name].numpy(), value, rtol=1e-6, atol=1e-7, err_msg=name)

    for other in (0, 2):
        changed = _model(freeze_stages=other)
        changed_optimizer = build_optimizer(changed, opt='adamw', lr=1e-2)
        with pytest.raises(ValueError, match=rf'checkpoint-latest.pd: its optimizer state covers other parameters .* '
                                             rf'saved with --freeze_stages 1, this run has {other}'):
            _checkpoint(tmp_path, changed, changed_optimizer, other).load_state_dict(ckpt, path)


def test_optimizer_state_saved_before_any_update_fits_another_freeze(tmp_path):
    model = _model(freeze_stages=1)
    optimizer = build_optimizer(model, opt='adamw', lr=1e-2)
    path = _checkpoint(tmp_path, model, optimizer, 1).save_latest({'epoch': 0, 'step_in_epoch': 0, 'global_step': 0})
    ckpt = load_training_state(path)
    assert not ckpt['optimizer']
    other = _model(freeze_stages=0)
    other_optimizer = build_optimizer(other, opt='adamw', lr=1e-2)
    _checkpoint(tmp_path, other, other_optimizer, 0).load_state_dict(ckpt, path)
    _train_steps(other, other_optimizer, steps=1)
