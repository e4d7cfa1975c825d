"""setup_logger (rank-0 console + train.log, no doubled handlers), the scripts' console logging and the
JSON-lines log."""
import json
import logging
import re
import sys

import numpy as np
import pytest

from utils.logger import get_logger, log_json, setup_console_logging, setup_logger


@pytest.fixture
def logger_name(request):
    name = f'cvt_test_{request.node.name}'
    yield name
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def test_rank0_logs_to_stdout_and_file(tmp_path, capsys, logger_name):
    logger = setup_logger(str(tmp_path / 'run'), rank=0, name=logger_name)
    logger = setup_logger(str(tmp_path / 'run'), rank=0, name=logger_name)  # again: no doubled lines
    logger.info('epoch 1 done')
    logging.getLogger(f'{logger_name}.child').info('from a library module')
    for handler in logger.handlers:
        handler.flush()
    out = capsys.readouterr().out
    assert out.count('epoch 1 done') == 1 and 'from a library module' in out
    text = (tmp_path / 'run' / 'train.log').read_text()
    assert text.count('epoch 1 done') == 1
    setup_logger(str(tmp_path / 'run'), rank=0, name=logger_name).info('second run')
    assert 'epoch 1 done' in (tmp_path / 'run' / 'train.log').read_text()  # appended, not truncated


def test_other_ranks_only_warn(tmp_path, capsys, logger_name):
    logger = setup_logger(str(tmp_path), rank=1, name=logger_name)
    logger.info('hidden')
    logger.warning('visible')
    out = capsys.readouterr().out
    assert 'hidden' not in out and 'visible' in out
    assert not (tmp_path / 'train.log').exists()


def test_console_logging_gives_project_and_root_lines_the_train_format_on_stderr(capsys):
    paddles = logging.StreamHandler(sys.stderr)  # what Paddle's import attaches to the root logger
    paddles.setFormatter(logging.Formatter('[%(asctime)-15s] [%(levelname)8s] %(filename)s:%(lineno)s - %(message)s'))
    logging.getLogger().addHandler(paddles)
    try:
        setup_console_logging()
        get_logger('training.evaluation').info('a project line')
        logging.getLogger('some_library').warning('a library line')
    finally:
        logging.getLogger().removeHandler(paddles)
    captured = capsys.readouterr()
    assert captured.out == ''  # stdout is for results
    lines = captured.err.splitlines()
    line_format = r'\[\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING)\] a \w+ line'
    assert len(lines) == 2 and all(re.fullmatch(line_format, x) for x in lines), lines


def test_get_logger_is_child_of_project_logger():
    assert get_logger('training.optim').name == 'cvt.training.optim'
    assert get_logger().name == 'cvt'


def test_log_json_appends_lines(tmp_path):
    path = tmp_path / 'out' / 'log.txt'
    log_json(str(path), {'epoch': 0, 'train_loss': np.float32(2.5)})
    log_json(str(path), {'epoch': 1, 'test_acc1': 12.5})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{'epoch': 0, 'train_loss': 2.5}, {'epoch': 1, 'test_acc1': 12.5}]
    with pytest.raises(TypeError, match='not JSON serialisable'):
        log_json(str(path), {'bad': object()})
