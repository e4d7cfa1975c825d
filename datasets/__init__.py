"""ImageNet data pipeline: datasets, transforms, RandAugment, Random Erasing, Mixup, samplers, loaders."""
from utils.env import configure_cpu_runtime

# loader.py imports paddle, which pins OMP_NUM_THREADS=1 unless it is set before the first import
configure_cpu_runtime()
