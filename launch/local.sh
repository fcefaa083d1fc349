#!/usr/bin/env bash
# Run one nme_train job as N local processes with D fake CPU devices each.
# Needs: this repository and its environment (see README). Usage:
#   launch/local.sh N D --config=configs/default.py --workdir=DIR [trainer flags...]
# Same as: python launch/local.py --processes N --devices D -- <trainer flags>
# Exits non-zero, naming the process, if any process fails (the others are stopped).
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS --workdir=DIR [trainer flags...]" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"  # PYTHON= picks another environment
[ -x "$python" ] || python=python3
processes="$1"
devices="$2"
shift 2
exec "$python" "$here/local.py" --processes "$processes" --devices "$devices" -- "$@"
