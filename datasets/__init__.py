"""ImageNet data pipeline: datasets, transforms, RandAugment, Random Erasing, Mixup, samplers, loaders."""
import utils.env  # noqa: F401  (first: loader.py imports paddle, which pins OMP_NUM_THREADS=1 unless set before)
