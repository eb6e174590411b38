#!/usr/bin/env bash
# Smoke test of the local Slurm test cluster: what the cluster runtime's Slurm scripts rely
# on, checked against the real slurmctld/slurmd that scripts/slurm-up starts (it starts
# them when they are not up, and leaves them running; scripts/slurm-down stops them).
#
#   tests/slurm-smoke.sh            needs root; prints "N passed, M failed"; exit 1 on any failure
#
# Every wait is bounded; the whole run takes about 15 s. Job files go to a fresh
# directory under $OVERINTERP_SLURM_DIR/jobs, removed when everything passed.
# Checks run through `check NAME FUNCTION` (SC2317), print job-side variables literally
# (SC2016), and use `A && B || { fail; }` where the block only reports (SC2015).
# shellcheck disable=SC2317,SC2016,SC2015
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
wait_job="$root/scripts/slurm-wait-job"

env_line="$("$root/scripts/slurm-up" 2)" || {
  echo "slurm-smoke: scripts/slurm-up failed" >&2
  echo "0 passed, 1 failed"
  exit 1
}
eval "$env_line"
export SLURM_CONF
work="$(mktemp -d "${OVERINTERP_SLURM_DIR:-/tmp/overinterp-slurm}/jobs/smoke.XXXXXX")"
cd "$work" || exit 1

passed=0
failed=0
# check NAME FUNCTION: runs FUNCTION, which prints why on failure and returns non-zero.
check() {
  local name="$1" fn="$2" t0 out rc ms line
  t0=${EPOCHREALTIME/./}
  out="$("$fn" 2>&1)"
  rc=$?
  ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    printf 'ok   %-48s %6d ms\n' "$name" "$ms"
  else
    failed=$((failed + 1))
    printf 'FAIL %-48s %6d ms\n' "$name" "$ms"
    while IFS= read -r line; do echo "     | $line"; done <<<"$out"
  fi
}
# Polls COMMAND every 0.1 s for at most SECONDS.
wait_until() {
  local secs="$1" i
  shift
  for ((i = 0; i < secs * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
# A TCP port unlikely to be in use; each check that listens takes its own.
free_port() { echo $((20000 + RANDOM % 20000)); }

# Perl (Essential on Debian, unlike python3 or nc) plays a TCP leader and its workers.
# leader PORT N: accepts N connections on 127.0.0.1:PORT and prints the line each sends.
cat >leader.pl <<'EOF'
use IO::Socket::INET;
my ($port, $n) = @ARGV;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $port, Listen => 8,
                              ReuseAddr => 1) or die "listen on $port: $!\n";
$| = 1;
alarm 30;
for (1 .. $n) { my $c = $s->accept or die "accept: $!\n"; my $l = <$c>; print "got: $l"; }
EOF
# worker PORT: connects (retrying while the leader starts) and sends its node name.
cat >worker.pl <<'EOF'
use IO::Socket::INET;
my $port = $ARGV[0];
for (1 .. 100) {
  my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $port);
  if ($c) { print $c "task $ENV{SLURM_PROCID} on $ENV{SLURMD_NODENAME}\n"; close $c; exit 0; }
  select(undef, undef, undef, 0.1);
}
die "worker: no leader on port $port\n";
EOF

t_nodes_idle() {
  local got
  got="$(sinfo -h -N -t idle -o '%N' | sort -u | tr '\n' ' ')"
  [ "$got" = "node1 node2 " ] || {
    echo "idle nodes: '$got', want 'node1 node2 '"
    sinfo -N
    return 1
  }
}

t_sbatch_wrap() {
  local j state
  j="$(sbatch --parsable -o wrap.out --wrap 'echo "wrap ran on $SLURMD_NODENAME"')" || return 1
  state="$("$wait_job" "$j" 30)"
  [ "$state" = COMPLETED ] || {
    echo "job $j ended $state"
    return 1
  }
  grep -qE '^wrap ran on node[12]$' wrap.out || {
    echo "wrap.out:"
    cat wrap.out
    return 1
  }
}

t_failed_exit_code() {
  local j state rc
  j="$(sbatch --parsable -o /dev/null --wrap 'exit 3')" || return 1
  state="$("$wait_job" "$j" 30)"
  rc=$?
  [ "$state" = FAILED ] && [ "$rc" -eq 1 ] || {
    echo "job $j: slurm-wait-job printed '$state', exit $rc; want FAILED, exit 1"
    return 1
  }
  scontrol -o show job "$j" | grep -q 'ExitCode=3:0' || {
    scontrol -o show job "$j"
    return 1
  }
}

t_srun_two_nodes() {
  local out
  out="$(timeout 30 srun -N2 -n2 bash -c 'echo "$SLURM_PROCID $SLURMD_NODENAME"' | sort)" || return 1
  [ "$out" = $'0 node1\n1 node2' ] || {
    echo "srun -N2 -n2 printed:"
    echo "$out"
    return 1
  }
}

t_srun_tasks_talk() {
  local port out
  port="$(free_port)"
  out="$(timeout 30 srun -N2 -n2 bash -c '
    if [ "$SLURM_PROCID" = 0 ]; then exec perl leader.pl "$1" 1; else exec perl worker.pl "$1"; fi
  ' _ "$port")" || {
    echo "srun failed: $out"
    return 1
  }
  [ "$out" = "got: task 1 on node2" ] || {
    echo "task 0 received: '$out', want 'got: task 1 on node2'"
    return 1
  }
}

# The shape of slurm/sis.sbatch: the batch script (on the allocation's first host) starts a
# leader in the background; one worker per node via srun connects to it.
t_batch_leader_srun_workers() {
  local port j state
  port="$(free_port)"
  cat >leader.sbatch <<EOF
#!/bin/bash
hosts=(\$(scontrol show hostnames "\$SLURM_JOB_NODELIST"))
echo "hosts: \${hosts[*]} batch on: \$SLURMD_NODENAME"
perl leader.pl $port 2 &
leader=\$!
srun --ntasks-per-node=1 perl worker.pl $port
wait \$leader
EOF
  j="$(sbatch --parsable -N2 -o leader.out leader.sbatch)" || return 1
  state="$("$wait_job" "$j" 30)"
  [ "$state" = COMPLETED ] &&
    grep -qx 'hosts: node1 node2 batch on: node1' leader.out &&
    grep -qx 'got: task 0 on node1' leader.out &&
    grep -qx 'got: task 1 on node2' leader.out || {
    echo "job $j ended $state; leader.out:"
    cat leader.out
    return 1
  }
}

# The shape of slurm/add-workers.sbatch: a second allocation on the same nodes runs while
# the first job holds both.
t_second_allocation_alongside() {
  local first second state
  first="$(sbatch --parsable -N2 -o /dev/null --wrap 'sleep 60')" || return 1
  "$wait_job" --running "$first" 20 >/dev/null || {
    echo "first job $first did not start"
    return 1
  }
  second="$(sbatch --parsable -N2 -o second.out --wrap 'srun --ntasks-per-node=1 bash -c "echo \$SLURMD_NODENAME"')" || return 1
  state="$("$wait_job" "$second" 30)"
  scancel "$first" "$second" 2>/dev/null # the second one has normally completed
  [ "$state" = COMPLETED ] && [ "$(sort second.out | tr '\n' ' ')" = "node1 node2 " ] || {
    echo "second job $second ended $state while $first ran; second.out:"
    cat second.out
    return 1
  }
  state="$("$wait_job" "$first" 45)"
  [ "$state" = CANCELLED ] || {
    echo "first job $first ended $state after scancel"
    return 1
  }
}

t_scancel_runs_term_trap() {
  local j state
  cat >trap.sbatch <<'EOF'
#!/bin/bash
trap 'echo "TERM trapped on $SLURMD_NODENAME"; exit 0' TERM
echo started
while :; do sleep 1 & wait $!; done
EOF
  j="$(sbatch --parsable -o trap.out trap.sbatch)" || return 1
  wait_until 20 grep -q started trap.out || {
    echo "job $j did not start"
    return 1
  }
  scancel "$j"
  state="$("$wait_job" "$j" 45)"
  [ "$state" = CANCELLED ] && grep -qx 'TERM trapped on node1' trap.out || {
    echo "job $j ended $state; trap.out:"
    cat trap.out
    return 1
  }
}

# How a test can preempt deterministically: USR1 to the batch script only, as
# --signal=B:USR1@T would send it (that one arrives 4-20 s late: time limits are checked
# about every 30 s).
t_scancel_usr1_batch() {
  local j state
  cat >usr1.sbatch <<'EOF'
#!/bin/bash
trap 'echo "USR1 trapped on $SLURMD_NODENAME"; exit 0' USR1
echo started
while :; do sleep 1 & wait $!; done
EOF
  j="$(sbatch --parsable -o usr1.out usr1.sbatch)" || return 1
  wait_until 20 grep -q started usr1.out || {
    echo "job $j did not start"
    return 1
  }
  scancel --signal=USR1 --batch "$j"
  state="$("$wait_job" "$j" 30)"
  [ "$state" = COMPLETED ] && grep -qx 'USR1 trapped on node1' usr1.out || {
    echo "job $j ended $state; usr1.out:"
    cat usr1.out
    return 1
  }
}

t_requeue_restart_count() {
  local j state
  cat >requeue.sbatch <<'EOF'
#!/bin/bash
echo "run restart_count=${SLURM_RESTART_COUNT:-0}"
# The first run waits to be requeued; the rerun finishes.
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then while :; do sleep 1 & wait $!; done; fi
EOF
  j="$(sbatch --parsable --requeue --open-mode=append -o requeue.out requeue.sbatch)" || return 1
  wait_until 20 grep -q 'restart_count=0' requeue.out || {
    echo "job $j did not start"
    return 1
  }
  scontrol requeue "$j" || return 1
  # A requeued job waits cred_expire+1 s (11 s here) before it may start again; once it
  # is PENDING, a nearer StartTime shortens that wait. Not StartTime=now: slurmd revokes
  # the job's credentials as of the requeue, to the second, and kills a rerun launched
  # within that same second ("Job credential revoked", the job ends FAILED).
  wait_until 20 bash -c "scontrol -o show job $j | grep -q JobState=PENDING" &&
    scontrol update JobId="$j" StartTime=now+2
  state="$("$wait_job" "$j" 60)"
  [ "$state" = COMPLETED ] && [ "$(grep -c '^run ' requeue.out)" -eq 2 ] &&
    grep -qx 'run restart_count=1' requeue.out || {
    echo "job $j ended $state; requeue.out:"
    cat requeue.out
    return 1
  }
}

t_wait_job_unknown() {
  local out rc
  out="$("$wait_job" 999999 5 2>/dev/null)"
  rc=$?
  [ "$out" = UNKNOWN ] && [ "$rc" -eq 3 ] || {
    echo "slurm-wait-job on an unknown job printed '$out', exit $rc; want UNKNOWN, exit 3"
    return 1
  }
}

check "all nodes idle after slurm-up" t_nodes_idle
check "sbatch --wrap runs and COMPLETES" t_sbatch_wrap
check "a failing job ends FAILED with its exit code" t_failed_exit_code
check "srun -N2 -n2: one task per emulated node" t_srun_two_nodes
check "srun tasks talk over 127.0.0.1" t_srun_tasks_talk
check "batch leader + srun workers (sis.sbatch shape)" t_batch_leader_srun_workers
check "second allocation beside a running job" t_second_allocation_alongside
check "scancel runs the batch script's TERM trap" t_scancel_runs_term_trap
check "scancel --signal=USR1 --batch reaches the trap" t_scancel_usr1_batch
check "--requeue + scontrol requeue: RESTART_COUNT=1" t_requeue_restart_count
check "slurm-wait-job: unknown job" t_wait_job_unknown

echo "$passed passed, $failed failed"
if [ "$failed" -eq 0 ]; then
  cd / && rm -rf "$work"
  exit 0
fi
echo "job files kept in $work" >&2
exit 1
