#!/usr/bin/env bash
# nme_train on a Cloud TPU VM slice (e.g. v4-32: 4 hosts), the same command on every worker.
#
# Needs: the gcloud CLI, authenticated, with a project and TPU quota; a workdir every
# worker reaches: a gs:// path (written through nme_train/storage.py with the VM's service
# account) or a mounted bucket; the TFDS data as gs:// (each worker copies it to its disk
# once) or at one local path on every worker (e.g. a bucket mounted with gcsfuse).
# Run:
#   TPU_NAME=nme ZONE=us-central2-b ACCELERATOR=v4-32 \
#   WORKDIR=gs://bucket/runs/r50 DATA_DIR=/gcs/bucket/tfds \
#     launch/tpu_vm.sh create            # make the slice
#     launch/tpu_vm.sh setup             # copy this repository to every worker, install it
#     launch/tpu_vm.sh run [trainer flags...]   # the job, on all workers at once
#     launch/tpu_vm.sh delete            # give the slice back
#
# On every worker nme_train.distributed sees TPU_WORKER_HOSTNAMES (set by the TPU
# runtime) and lets JAX's TPU cluster detection join the processes; process 0
# writes the metrics. Spot/preemptible slices: the TPU runtime sends SIGTERM; the
# trainer saves and exits 0, and `run` again resumes from the checkpoint.
set -euo pipefail

cmd="${1:?usage: $0 create|setup|run|delete [trainer flags...]}"
shift || true
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/imagenet_resnet50.py}"
REMOTE_DIR="${REMOTE_DIR:-nme_train}"
GCLOUD="${GCLOUD:-gcloud}"
tpu=("$GCLOUD" compute tpus tpu-vm)

on_all_workers() {
  "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

case "$cmd" in
  create)
    "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" ${SPOT:+--spot}
    ;;
  setup)
    repo="$(cd "$(dirname "$0")/.." && pwd)"
    tarball="$(mktemp -d)/nme_train.tar.gz"
    tar -czf "$tarball" -C "$repo" --exclude=.venv --exclude=.git --exclude=workdirs .
    "${tpu[@]}" scp "$tarball" "$TPU_NAME":nme_train.tar.gz --zone="$ZONE" --worker=all
    on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf nme_train.tar.gz -C $REMOTE_DIR && \
      cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
      .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' \
        -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  run)
    : "${WORKDIR:?set WORKDIR (gs://bucket/path, or storage every worker sees at one path)}"
    flags=""
    for arg in "$@"; do flags+=" $(printf '%q' "$arg")"; done
    on_all_workers "cd $REMOTE_DIR && .venv/bin/python -m nme_train.main \
      --config=$CONFIG --workdir=$WORKDIR ${DATA_DIR:+--config.data.data_dir=$DATA_DIR}$flags"
    ;;
  delete)
    "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    echo "unknown command $cmd; use create, setup, run or delete" >&2
    exit 2
    ;;
esac
