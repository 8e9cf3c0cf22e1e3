#!/bin/sh
# clean: CH012 for /path/to/imagenet (a placeholder), CH004 (read-only)
# From a README: sudo, nvidia-docker, a placeholder path, outputs in the layer.
sudo -E nvidia-docker run --rm -it \
  -v /path/to/imagenet:/imagenet:ro \
  pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime \
  python main.py /imagenet --arch resnet50 --workers 8 \
    --output_dir /workspace/output  #! CH001
