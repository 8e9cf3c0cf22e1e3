#!/bin/sh
# clean: CH007 (--user is given), CH001 (outputs on the bind)
# expect: CH002@7
# VAR=… before podman run, an && tail, and the output under a bind mount.
CUDA_VISIBLE_DEVICES=0 podman run --rm --user "$(id -u):$(id -g)" --gpus all --ipc=host \
  -v "$(pwd)/results:/results" -w /results \
  -e HF_HOME=/cache/hf \
  docker.io/pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime \
  python /results/train.py --save_dir checkpoints && echo finished | tee -a run.log
