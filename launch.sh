#!/usr/bin/env bash
# Launch ernie-cpt training.
#
#   ./launch.sh CONFIG [--num-gpus N] [--hostfile FILE] [--output-dir DIR] [--set key=value ...]
#                      [any other `ernie-cpt train` option, e.g. --max-steps 100 --resume must]
#
# With GPUs (or a hostfile) it runs the DeepSpeed launcher: one process per GPU, on every
# host of the hostfile (DeepSpeed's "host slots=N" format). Without a GPU it runs the
# single-process CPU path: the same trainer and engine, on DeepSpeed's CPU accelerator.
# It prints the command before running it. LAUNCH_DRY_RUN=1 prints without running.
set -euo pipefail

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
config=$1; shift
num_gpus="" hostfile="" output_dir="" rest=()
while (($#)); do
  case $1 in
    --num-gpus) num_gpus=${2:?--num-gpus needs a number}; shift 2 ;;
    --hostfile) hostfile=${2:?--hostfile needs a file}; shift 2 ;;
    --output-dir) output_dir=${2:?--output-dir needs a directory}; shift 2 ;;
    -h|--help) usage ;;
    *) rest+=("$1"); shift ;;
  esac
done
[[ -f $config ]] || { echo "launch.sh: no such config: $config" >&2; exit 2; }
[[ -z $hostfile || -f $hostfile ]] || { echo "launch.sh: no such hostfile: $hostfile" >&2; exit 2; }
output_dir=${output_dir:-runs/$(basename "$config" .yaml)}
here=$(cd "$(dirname "$0")" && pwd)
# The project's virtual environment when there is one (README quick start), else python3.
default_python=python3
[[ -x $here/.venv/bin/python ]] && default_python=$here/.venv/bin/python
python=${PYTHON:-$default_python}
# ERNIE_CPT_GPUS overrides detection (e.g. to print a multi-GPU command on a CPU machine).
gpus=${ERNIE_CPT_GPUS:-$("$python" -c 'import torch; print(torch.cuda.device_count())')}

train_args=(train "$config" --output-dir "$output_dir" "${rest[@]}")
if [[ -n $hostfile || $gpus -gt 0 ]]; then
  cmd=("$python" -m deepspeed.launcher.runner)  # the `deepspeed` launcher of this environment
  [[ -n $hostfile ]] && cmd+=(--hostfile "$hostfile")
  if [[ -n $num_gpus ]]; then
    cmd+=(--num_gpus "$num_gpus")
  elif [[ -z $hostfile ]]; then
    cmd+=(--num_gpus "$gpus")
  fi
  cmd+=(--module ernie_cpt.cli "${train_args[@]}")
else
  if [[ -n $num_gpus && $num_gpus -gt 1 ]]; then
    echo "launch.sh: --num-gpus $num_gpus asked, but this machine has no GPU; running one CPU process" >&2
  fi
  cmd=("$python" -m ernie_cpt.cli "${train_args[@]}")
fi
echo "+ ${cmd[*]}"
[[ ${LAUNCH_DRY_RUN:-0} == 1 ]] && exit 0
exec "${cmd[@]}"
