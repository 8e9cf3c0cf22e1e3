#!/bin/bash
# clean: CH001 for the run with a dataset volume (its unknown working directory may be on it), CH008 (--shm-size given)
# Relative outputs in images lint does not know: with no volume or bind mount at all, the
# working directory cannot be on one, wherever it is.
set -e
nvidia-docker run -it --rm --shm-size 8g detectron2:v0 \
  python tools/train_net.py --config-file configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml \
  --num-gpus 1 OUTPUT_DIR ./output  #! CH001
nvidia-docker run -it --rm --shm-size 8g -v coco:/datasets/coco:ro detectron2:v0 \
  python tools/train_net.py --config-file configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml \
  --num-gpus 1 OUTPUT_DIR ./output
docker run --rm --tmpfs /scratch myorg/trainer:3 python train.py --output_dir runs/exp1  #! CH001
