#!/usr/bin/env bash
# Times README's first command (`make demo`) on a fresh clone of this repository:
#   cold: empty cache and no virtual environment (pip downloads everything, no pip cache);
#   warm: the same clone again with the miniature backbone cached, the dataset, report and
#         leaderboard removed, so everything but installation and pre-training runs again.
# Ends with `RESULT cold_min=<minutes> warm_min=<minutes>`; logs are kept in the printed folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d -t lora-wise-demo-time-XXXXXX)
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export LORA_WISE_CACHE="$work/cache"
export PIP_NO_CACHE_DIR=1

minutes() { python3 -c "print(f'{($2 - $1) / 60:.1f}')"; }

start=$(date +%s)
make demo > "$work/cold.log" 2>&1
cold=$(minutes "$start" "$(date +%s)")
echo "cold run (install, pre-train, build, experiments, report): $cold min"

rm -rf lora-wise lora-wise-report "$LORA_WISE_CACHE/datasets" "$LORA_WISE_CACHE/leaderboard"
start=$(date +%s)
make demo > "$work/warm.log" 2>&1
warm=$(minutes "$start" "$(date +%s)")
echo "warm run (backbone cached): $warm min"
echo "logs: $work/cold.log $work/warm.log"
echo "RESULT cold_min=$cold warm_min=$warm"
