"""Experiment trackers fed one record per epoch: Weights & Biases (--log_wandb) and VisualDL
(--log_visualdl, PaddleClas's tracker). Both are optional packages and work offline."""
import os
from numbers import Number
from typing import Any, Dict, List


class WandbTracker:
    def __init__(self, run_dir: str, project: str, config: Dict[str, Any]):
        try:
            import wandb
        except ImportError as e:
            raise ValueError('--log_wandb needs the wandb package: pip install wandb') from e
        # One wandb run per run directory, so a resumed run continues the same curves.
        run_id = os.path.basename(os.path.abspath(run_dir)).replace('/', '_')
        self.run = wandb.init(project=project, name=os.path.basename(run_dir), id=run_id, resume='allow',
                              dir=run_dir, config=config)

    def log(self, record: Dict[str, Any], epoch: int) -> None:
        self.run.log(record, step=epoch)

    def close(self) -> None:
        self.run.finish()


class VisualDLTracker:
    """Scalars in RUN_DIR/visualdl (view with `visualdl --logdir RUN_DIR/visualdl`); a resumed run appends."""

    def __init__(self, run_dir: str):
        try:
            from visualdl import LogWriter
        except ImportError as e:
            raise ValueError('--log_visualdl needs the visualdl package: pip install visualdl') from e
        self.writer = LogWriter(logdir=os.path.join(run_dir, 'visualdl'))

    def log(self, record: Dict[str, Any], epoch: int) -> None:
        for key, value in record.items():
            if isinstance(value, Number) and key != 'epoch':
                self.writer.add_scalar(tag=key.replace('_', '/', 1), value=float(value), step=epoch)

    def close(self) -> None:
        self.writer.close()


def build_trackers(run_dir: str, *, wandb: bool, visualdl: bool, wandb_project: str, config: Dict[str, Any]
                   ) -> List[Any]:
    trackers: List[Any] = []
    if wandb:
        trackers.append(WandbTracker(run_dir, wandb_project, config))
    if visualdl:
        trackers.append(VisualDLTracker(run_dir))
    return trackers
