"""Deployment: the export folder (its files and inference.yml), writing it, quantising it, running it on
Paddle Inference, ONNX Runtime or OpenVINO, and the classify-and-show loop of predict.py and infer.py."""
import utils.env  # noqa: F401  (first: these modules import paddle, which pins OMP_NUM_THREADS=1 unless set before)
