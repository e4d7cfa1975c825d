"""Logging for library and scripts: rank-0 console + `train.log`, and the JSON-lines epoch log."""
import json
import logging
import logging.handlers
import os
import re
import sys
from numbers import Number
from typing import Any, Optional

from .fileio import atomic_write

ROOT_NAME = 'cvt'
_FORMAT = '[%(asctime)s %(levelname)s] %(message)s'
_DATEFMT = '%m/%d %H:%M:%S'
# A console line in that format, for tools that read other scripts' output
LOG_LINE = re.compile(r'\[\d\d/\d\d \d\d:\d\d:\d\d (?P<level>[A-Z]+)\] (?P<message>.*)')


def get_logger(name: Optional[str] = None) -> logging.Logger:
    """The project logger, or a named child of it (library modules pass `__name__`).

    Children propagate to the handlers `setup_logger` attaches, so library code never prints itself.
    """
    return logging.getLogger(ROOT_NAME if not name else f'{ROOT_NAME}.{name}')


class _ConsoleHandler(logging.StreamHandler):
    """Lines to sys.stdout or sys.stderr as they are when each line is logged (a stream replaced later,
    e.g. by a test's capture, still receives them); on a terminal through tqdm, so they land above a
    progress bar instead of through it."""

    def __init__(self, stream_name: str):
        self._stream_name = stream_name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _):  # StreamHandler.__init__ sets one; this handler looks its stream up per line
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream.isatty():
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
        else:
            super().emit(record)


def setup_logger(output_dir: Optional[str] = None, rank: int = 0, name: str = ROOT_NAME,
                 stream: str = 'stdout') -> logging.Logger:
    """Rank 0 logs INFO to `stream` ('stdout' or 'stderr') and appends to `output_dir/train.log`; other
    ranks log WARNING+ to `stream`.

    Calling it again replaces the handlers it attached before, so lines are never doubled. Without
    `output_dir`, rank 0 holds its lines until a later call names the folder, which then receives them
    (train.py decides whether a run folder may be written only after reading the data and checkpoint).
    """
    logger = logging.getLogger(name)
    held = []
    for handler in list(logger.handlers):
        if isinstance(handler, logging.handlers.BufferingHandler):
            held = handler.buffer
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False  # the root logger's handlers would print every line twice
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    console = _ConsoleHandler(stream)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, 'train.log'), mode='a', encoding='utf-8')
        file_handler.setFormatter(formatter)
        for record in held:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    elif rank == 0:
        logger.addHandler(logging.handlers.BufferingHandler(capacity=10_000))
    return logger


def setup_console_logging() -> None:
    """Every script's logging before its main runs (cli.run_main): project lines on stderr, stdout staying
    for results (train.py's setup_logger moves them to stdout and train.log), and the same format for
    what other libraries log through the root logger, where Paddle's import attaches a stderr handler
    with a format of its own (paddle.distributed.utils.log_utils)."""
    setup_logger(stream='stderr')
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # not pytest's capture handlers, which subclass it
            handler.setFormatter(formatter)


def _to_builtin(value: Any):
    """JSON fallback for numpy scalars and one-element tensors/arrays."""
    if hasattr(value, 'item'):
        return value.item()
    if isinstance(value, Number):
        return float(value)
    raise TypeError(f'log_json: value of type {type(value).__name__} is not JSON serialisable')


def log_json(path: str, record: dict) -> None:
    """Append `record` as one JSON line to `path` (rank 0 only), flushed so a crash loses nothing."""
    from .distributed import is_main_process  # deferred: importing paddle here would precede utils.env
    if not is_main_process():
        return
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    line = json.dumps(record, default=_to_builtin)
    with open(path, 'a', encoding='utf-8') as f:
        f.write(line + '\n')
        f.flush()


def truncate_json_log(path: str, from_epoch: int) -> None:
    """Drop the lines of epochs >= `from_epoch` (a resumed run logs them again), atomically."""
    if not os.path.isfile(path):
        return
    with open(path, encoding='utf-8') as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get('epoch', -1) < from_epoch]
    if len(kept) == len(lines):
        return
    with atomic_write(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        f.writelines(kept)
