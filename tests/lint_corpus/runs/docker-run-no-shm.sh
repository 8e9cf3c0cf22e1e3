#!/bin/bash
# clean: CH002 (HF_HOME is on the volume), CH009, CH010
# A GPU run with no --shm-size, its dataset writable, a model cache volume.
docker run -d --gpus '"device=0,1"' -v hf:/hf -e HF_HOME=/hf -v "$PWD/datasets/squad:/data/squad" --user 1000 huggingface/transformers-pytorch-gpu:4.41.2 python run_qa.py --train_file /data/squad/train.json --output_dir /hf/out  #! CH008 CH004
