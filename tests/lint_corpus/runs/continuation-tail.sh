#!/bin/bash
# clean: CH001 (the checkpoints are on the named volume), CH008 (--shm-size given), CH004
# A multi-line run with a named checkpoints volume, as it should be.
set -euo pipefail
docker run --gpus all --shm-size=16g --name llama-ft \
    --user 1000:1000 \
    --mount type=volume,source=llama-ckpt,target=/ckpt \
    --mount type=bind,source="$(pwd)",target=/src,readonly \
    nvcr.io/nvidia/pytorch:24.05-py3 \
    torchrun --nproc_per_node 8 /src/finetune.py --ckpt_dir /ckpt/llama3 \
    2>&1 | tee train.log
