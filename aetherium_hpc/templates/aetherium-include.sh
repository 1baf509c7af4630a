# For an existing sbatch script: source this file, then prefix the command you already run.
#
#   source /path/to/aetherium-hpc/slurm/templates/aetherium-include.sh
#   aetherium_run python train.py --epochs 10        # instead of: srun python train.py ...
#
# Sets AETHERIUM_RUN_DIR (if unset) to ./aetherium-runs/<job id> and runs the command under
# `srun aetherium-hpc run --`, with any SRUN_ARGS you set before (an array, e.g. SRUN_ARGS=(-N2)).
#
# For Prometheus: export AETHERIUM_PROMETHEUS_TEXTFILE=/var/lib/node_exporter/textfile_collector
# (the folder node_exporter's --collector.textfile.directory reads; it must exist on the nodes)
# before aetherium_run, and each node writes its latest values there as
# aetherium_<job>_<node>.prom, removed when the command ends (docs/PROMETHEUS.md).

export AETHERIUM_RUN_DIR="${AETHERIUM_RUN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/aetherium-runs/${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}}"
mkdir -p "$AETHERIUM_RUN_DIR"

aetherium_run() {
    if [ "$#" -eq 0 ]; then
        echo "aetherium_run: give the command to run, e.g. aetherium_run python train.py" >&2
        return 2
    fi
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        srun "${SRUN_ARGS[@]+"${SRUN_ARGS[@]}"}" aetherium-hpc run -- "$@"
    else
        aetherium-hpc run -- "$@"
    fi
}
