#!/bin/bash
# Submit an array, then a merge + report job that starts when every task has ended
# (afterany: also after failed or cancelled tasks, whose data is on disk too).
#
#   slurm/templates/chain-merge.sh RUN_DIR python train.py
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 RUN_DIR COMMAND [ARG ...]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
run_dir=$1
shift
mkdir -p "$run_dir"
array_id=$(AETHERIUM_RUN_DIR="$run_dir" sbatch --parsable "$here/array.sbatch" "$@")
array_id=${array_id%%;*}   # --parsable prints "id" or "id;cluster"
merge_id=$(sbatch --parsable --dependency="afterany:${array_id}" "$here/merge.sbatch" "$run_dir")
echo "array job ${array_id}, merge job ${merge_id}; results in ${run_dir}"
