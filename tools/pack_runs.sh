#!/usr/bin/env bash
# Packs the small files of every finished (or diverged) run under a sweep root:
# configs, metrics, probe records, markers and logs; no checkpoints, no TensorBoard.
#
#   tools/pack_runs.sh study docs/measurements/study_runs.tar.xz
#   tar -xJf docs/measurements/study_runs.tar.xz -C study   # later: the sweeps skip these runs
set -euo pipefail
root=$1
out=$(realpath -m "$2")
list=$(mktemp)
cd "$root"
for dir in */*/; do
  [ -f "$dir/final.json" ] || [ -f "$dir/diverged.json" ] || continue
  for f in config.json point.json machines.jsonl final.json diverged.json metrics.jsonl probes.jsonl \
      train.log; do
    if [ -f "$dir/$f" ]; then echo "${dir%/}/$f" >> "$list"; fi
  done
done
ls ./*/sweep_*.json 2>/dev/null | sed 's|^\./||' >> "$list" || true
tar -cJf "$out" -T "$list"
echo "packed $(grep -c '/final.json$' "$list") finished and $(grep -c '/diverged.json$' "$list") diverged runs into $out ($(du -h "$out" | cut -f1))"
rm "$list"
