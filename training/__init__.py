"""Training: the epoch loop, evaluation, checkpoints, AMP, EMA, optimizer, LR schedule, losses, trackers,
preemption and train.py's flags."""
import utils.env  # noqa: F401  (first: these modules import paddle, which pins OMP_NUM_THREADS=1 unless set before)
