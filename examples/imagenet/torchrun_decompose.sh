#!/usr/bin/env bash
# Decompose an ImageNet ResNet-50 on one node of 8 GPUs with torchrun, then evaluate it.
#   bash examples/imagenet/torchrun_decompose.sh /data/imagenet resnet50.pt
# Lightning reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE); each rank decomposes its
# share of the class batches and rank 0 writes the run folder.
set -euo pipefail
ROOT=${1:?ImageNet root with train/<wnid>/ and test/<wnid>/}
WEIGHTS=${2:?state-dict file of the ResNet-50}
RUN=runs/imagenet_resnet50/decompose
torchrun --standalone --nproc_per_node=8 -m proto_lightning decompose \
  experiment=imagenet_resnet50 data.root="$ROOT" \
  blackbox=resnet50 blackbox_weights="$WEIGHTS" hydra.run.dir="$RUN"
torchrun --standalone --nproc_per_node=8 -m proto_lightning evaluate \
  experiment=imagenet_resnet50 data.root="$ROOT" blackbox_ckpt="$RUN/blackbox.ckpt" posthoc="$RUN/posthoc.pt"
