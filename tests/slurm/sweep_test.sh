#!/usr/bin/env bash
# A real Slurm test of experiments/slurm/sweep.sbatch, run by .ci/run:
#   1. installs slurm-wlm and munge from Debian's packages when they are missing;
#   2. starts munged, slurmctld and slurmd for a one-node cluster of this machine (state,
#      logs and config in a temporary folder);
#   3. submits the sweep script, CPU variant, as a 4-task array over a tiny 4-cell fixture,
#      cancels task 2 once its stage 2 has a checkpoint, lets the others finish, resubmits
#      index 2 alone;
#   4. checks: every cell finished exactly once, stage 1 trained once, the resubmitted cell
#      resumed from its checkpoint, `report` lists every cell, a plain rerun trains nothing;
#   5. stops the daemons it started, by pid (also on failure).
# Usage: tests/slurm/sweep_test.sh [BINARY]   (default target/debug/metricunet)
# Prints "slurm sweep: N passed, 0 failed" when every check holds; exits non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
BIN=$(realpath "${1:-target/debug/metricunet}")
[ -x "$BIN" ] || { echo "slurm sweep: no binary at $BIN (build it first)" >&2; exit 2; }

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm sweep: installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

work=$(mktemp -d /tmp/metricunet-slurm.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024) - 512}' /proc/meminfo)
mkdir -p "$work"/{spool,state,log,munge,run}
cat >"$work/slurm.conf" <<EOF
ClusterName=metricunet-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
SlurmdSpoolDir=$work/spool
StateSaveLocation=$work/state
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/filetxt
JobCompLoc=$work/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$work/slurm.conf

# munge: its own key and socket in the work folder, so a system munged is left alone
munge_sock=$work/munge/munge.socket
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
munged --force --key-file="$work/munge/munge.key" --socket="$munge_sock" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/log/munged.log" \
  --seed-file="$work/munge/munge.seed"
for _ in $(seq 50); do [ -s "$work/munge/munged.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/munge/munged.pid")")

slurmctld -i -f "$work/slurm.conf"
for _ in $(seq 100); do [ -s "$work/run/slurmctld.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/run/slurmctld.pid")")
slurmd -f "$work/slurm.conf"
for _ in $(seq 100); do [ -s "$work/run/slurmd.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/run/slurmd.pid")")
for _ in $(seq 120); do
  sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
  sleep 0.5
done
sinfo -h -o '%P %t %c' || { echo "slurm sweep: the cluster did not start"; tail -20 "$work"/log/*.log; exit 1; }

# the sweep: a fresh folder standing for a user's project folder
proj=$work/project
mkdir -p "$proj/experiments/slurm"
cp "$repo/experiments/slurm/sweep.sbatch" "$proj/experiments/slurm/"
cp "$repo/tests/fixtures/slurm-sweep.yaml" "$proj/experiments/"
cd "$proj"
export METRICUNET_BIN=$BIN METRICUNET_DEVICE=cpu RAYON_NUM_THREADS=1
root=runs/slurm-sweep
submit() { # the GPU script as it is, its resources overridden for this CPU node
  sbatch --parsable --gres=none --cpus-per-task=1 --mem=1G "$@" \
    experiments/slurm/sweep.sbatch experiments/slurm-sweep.yaml
}
wait_job() { # until no task of job $1 is queued or running
  for _ in $(seq 1200); do
    [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
    sleep 0.5
  done
  echo "slurm sweep: job $1 did not finish"; squeue; return 1
}
cell_of() { # the folder of cell $1
  { grep -l "^index: $1\$" "$root"/cells/*/cell.yaml 2>/dev/null || true; } | head -1 | xargs -r dirname
}
stage2_of() { # the shared folder where the cell in folder $1 trains its stage 2
  local h
  h=$(awk '/^stage2_hash:/ {print $2}' "$1/cell.yaml" 2>/dev/null)
  [ -n "$h" ] && echo "$root/stage2/$h"
}

job=$(submit --array=0-3)
echo "submitted array job $job"
killed=no
# tasks 2 and 3 wait for a free CPU; the loop ends when task 2 is cancelled, its cell has
# finished (too fast to catch), or the job is gone
for _ in $(seq 6000); do
  d=$(cell_of 2)
  s2=$([ -n "$d" ] && stage2_of "$d" || true)
  if [ -n "$s2" ] && [ -f "$s2/model.safetensors" ]; then break; fi
  if [ -n "$s2" ] && [ -f "$s2/checkpoint.safetensors" ]; then
    scancel "${job}_2" && killed=yes
    break
  fi
  [ -n "$(squeue -h -j "$job" 2>/dev/null)" ] || break
  sleep 0.1
done
wait_job "$job"
state2=$(awk '/^state:/ {print $2}' "$(cell_of 2)/cell.yaml" 2>/dev/null || echo none)
echo "task 2 cancelled: $killed; cell 2 then: $state2"
job2=$(submit --array=2)
echo "resubmitted index 2 as job $job2"
wait_job "$job2"

# the checks count failures themselves
set +e +o pipefail
passed=0
failed=0
check() { # description, command...
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok: $what"
  else
    failed=$((failed + 1))
    echo "FAILED: $what"
  fi
}
n_cells=$(ls -d "$root"/cells/*/ | wc -l)
finished=$(grep -l '^state: finished' "$root"/cells/*/cell.yaml | wc -l)
check "4 cell folders, all finished (found $n_cells, $finished finished)" \
  test "$n_cells" = 4 -a "$finished" = 4
once() { # every cell has exactly one finished attempt
  local f
  for f in "$root"/cells/*/cell.yaml; do
    [ "$(grep -c 'outcome: finished' "$f")" = 1 ] || return 1
  done
}
check "every cell finished exactly once" once
check "one shared stage 1" test "$(ls -d "$root"/stage1/*/ | wc -l)" = 1
s1=$(grep -h '  stage1_s:' "$root"/cells/*/cell.yaml | awk '$2 > 0' | wc -l)
check "stage 1 trained by one cell only ($s1)" test "$s1" = 1
c2=$(cell_of 2)
check "task 2 was cancelled mid-training" test "$killed" = yes
check "the cancelled attempt is recorded as interrupted" grep -q 'outcome: interrupted' "$c2/cell.yaml"
check "the resubmitted cell resumed from its checkpoint" grep -qE 'stage2_resumed_from: [1-9]' "$c2/cell.yaml"
report=$("$BIN" report "$root" 2>&1) || true
echo "$report" | tail -3
check "report lists all 4 cells" grep -q '4 of 4 cells' <<<"$report"
rerun=$("$BIN" run experiments/slurm-sweep.yaml --root "$root" --device cpu --no-report 2>&1) || true
check "a plain rerun trains nothing" test "$(grep -c 'was finished' <<<"$rerun")" = 4
check "no new stage 1 or cell after the rerun" test "$(ls -d "$root"/stage1/*/ "$root"/cells/*/ | wc -l)" = 5
if [ "$failed" -gt 0 ]; then
  echo "--- task logs"
  tail -n 20 ./*.out || true
  echo "--- rerun"
  echo "$rerun"
fi
echo "slurm sweep: $passed passed, $failed failed"
[ "$failed" = 0 ]
