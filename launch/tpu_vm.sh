#!/usr/bin/env bash
# nme_train on a Cloud TPU VM slice (e.g. v4-32: 4 hosts), the same command on every worker.
#
# Needs: the gcloud CLI, authenticated, with a project and TPU quota; a workdir every
# worker reaches: a gs:// path (written through nme_train/storage.py with the VM's service
# account) or a mounted bucket; the TFDS data as gs:// (each worker copies it to its disk
# once) or at one local path on every worker (e.g. a bucket mounted with gcsfuse).
# Run:
#   TPU_NAME=nme ZONE=us-central2-b ACCELERATOR=v4-32 \
#   WORKDIR=gs://bucket/runs/r50 DATA_DIR=gs://bucket/tfds \
#     launch/tpu_vm.sh create            # make the slice (SPOT=1: a Spot slice)
#     launch/tpu_vm.sh setup             # this checkout and its package on every worker
#     launch/tpu_vm.sh run [trainer flags...]   # start the job on all workers, detached
#     launch/tpu_vm.sh logs              # follow worker 0's log (Ctrl-C leaves the job)
#     launch/tpu_vm.sh stop              # SIGTERM: save at one step and stop (exit 75)
#     launch/tpu_vm.sh status            # the slice's state (READY, PREEMPTED, ...)
#     launch/tpu_vm.sh recreate [flags]  # a preempted Spot slice: delete, create, setup, run
#     launch/tpu_vm.sh delete            # give the slice back
#
# setup: the TPU runtimes' system Python is older than the package's requires-python
# (Ubuntu 22.04: Python 3.10), so every worker gets uv and a virtual environment with
# Python 3.11 (uv fetches a standalone build), with the package and its `gcs` extra and
# jax[tpu] installed into it (not the development tool chain).
# run: ssh passes none of this machine's environment: the variables named in
# FORWARD_ENV (default: every NME_*, JAX_*, TFDS_* and XLA_FLAGS that is set here) are
# written into the command. The job runs in its own session on each worker (setsid,
# nohup, output to $REMOTE_DIR/logs/train.log), so a dropped ssh connection leaves it
# running. The workers find each other from the metadata server (nme_train.distributed).
# Spot and preemptible slices: on preemption the slice's state becomes PREEMPTED, and a
# preempted TPU VM cannot be restarted: it must be deleted and created again
# (docs.cloud.google.com/tpu/docs/spot-compute). `recreate` does that and starts the
# job again; the trainer resumes from the last checkpoint in WORKDIR (a gs:// path
# survives the slice). The TPU runtime sends SIGTERM before a maintenance event: the
# trainer then saves at one step and exits 75.
set -euo pipefail

cmd="${1:?usage: $0 create|setup|run|logs|stop|status|recreate|delete [trainer flags...]}"
shift || true
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/imagenet_resnet50.py}"
REMOTE_DIR="${REMOTE_DIR:-nme_train}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"  # pyproject.toml: requires-python >= 3.11
GCLOUD="${GCLOUD:-gcloud}"
tpu=("$GCLOUD" compute tpus tpu-vm)

on_workers() {  # on_workers WORKER COMMAND: WORKER is all or an index
  "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

forwarded_env() {  # `K=V ...` for the variables to pass to the job, quoted for bash
  local names
  if [ -n "${FORWARD_ENV:-}" ]; then
    read -r -a names <<< "$FORWARD_ENV"
  else
    mapfile -t names < <(compgen -e | grep -E '^(NME_|JAX_|TFDS_|XLA_FLAGS$)' || true)
  fi
  local out="" name
  for name in "${names[@]}"; do
    if [ -n "${!name+set}" ]; then out+=" $name=$(printf '%q' "${!name}")"; fi
  done
  printf '%s' "$out"
}

create() {
  "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" ${SPOT:+--spot}
}

setup() {
  local repo tarball
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  tarball="$(mktemp -d)/nme_train.tar.gz"
  tar -czf "$tarball" -C "$repo" --exclude=.venv --exclude=.git --exclude=workdirs \
    --exclude=study --exclude=logs .
  "${tpu[@]}" scp "$tarball" "$TPU_NAME":nme_train.tar.gz --zone="$ZONE" --worker=all
  on_workers all "set -e; mkdir -p $REMOTE_DIR && tar -xzf nme_train.tar.gz -C $REMOTE_DIR
    command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || \
      curl -LsSf https://astral.sh/uv/install.sh | sh
    export PATH=\$HOME/.local/bin:\$PATH
    cd $REMOTE_DIR && uv venv --python $PYTHON_VERSION .venv && \
      uv pip install --python .venv/bin/python '.[gcs]' 'jax[tpu]'"
}

run() {
  : "${WORKDIR:?set WORKDIR (gs://bucket/path, or storage every worker sees at one path)}"
  local flags="" arg
  for arg in "$@"; do flags+=" $(printf '%q' "$arg")"; done
  # only the trainer goes to the background (a backgrounded `a && b` list would be a
  # subshell holding the ssh session's output open until the job ends)
  on_workers all "cd $REMOTE_DIR || exit 1; mkdir -p logs
    env$(forwarded_env) setsid nohup .venv/bin/python -m nme_train.main \
      --config=$CONFIG --workdir=$WORKDIR ${DATA_DIR:+--config.data.data_dir=$DATA_DIR}$flags \
      >> logs/train.log 2>&1 < /dev/null &
    echo \"worker \$(hostname): job started\""
}

case "$cmd" in
  create) create ;;
  setup) setup ;;
  run) run "$@" ;;
  logs) on_workers 0 "tail -n 100 -F $REMOTE_DIR/logs/train.log" ;;
  stop) on_workers all "pkill -TERM -f 'nme_train.main' || true" ;;
  status) "${tpu[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state)' ;;
  recreate)
    state="$("${tpu[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state)' || true)"
    echo "tpu_vm: $TPU_NAME is ${state:-absent}; deleting and creating it again"
    if [ -n "$state" ]; then "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet; fi
    create
    setup
    run "$@"
    ;;
  delete) "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *)
    echo "unknown command $cmd; use create, setup, run, logs, stop, status, recreate or delete" >&2
    exit 2
    ;;
esac
