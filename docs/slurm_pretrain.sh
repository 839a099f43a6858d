#!/bin/bash
# MoCo pretraining on several nodes with SLURM: one torchrun per node, 8 GPUs each.
#   sbatch --nodes=2 docs/slurm_pretrain.sh --preset mocov2_r50_imagenet --data DIR --out RUN_DIR [key=value ...]
# The run folder must be on a shared filesystem. On preemption (SIGTERM, sent by SLURM before
# the kill thanks to --signal) mocolab finishes the step, writes a checkpoint and exits with
# code 75; the job then requeues itself and continues with --resume auto.
#SBATCH --job-name=mocolab
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --output=mocolab-%j.out

set -uo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_NNODES" --nproc_per_node=8 \
    --rdzv-backend=c10d --rdzv-id="$SLURM_JOB_ID" --rdzv-endpoint="$head_node:29500" \
    -m mocolab pretrain --resume auto "$@" &
pid=$!
trap 'kill -TERM $pid' TERM  # forward SLURM's warning signal to srun (and on to torchrun)
wait $pid
rc=$?
if kill -0 $pid 2>/dev/null; then  # the trap fired: wait for the checkpoint and the real exit code
    wait $pid
    rc=$?
fi
if [ "$rc" -eq 75 ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
