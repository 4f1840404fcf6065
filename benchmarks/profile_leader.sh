#!/bin/sh
# Profile the leader broker during one workload of `trio_broker bench` (docs/performance.md,
# "Profiling a broker"):
#
#   PATH=.venv/bin:$PATH benchmarks/profile_leader.sh OUTDIR SECONDS WORKLOAD
#   (e.g. /tmp/prof 9 reads; one workload per run: with several, a later one can be missed)
#
# Once the load generators (`trio_broker._cli._loadgen`) run, after a second of warm-up, the
# broker this bench started that used the most CPU over the next second is taken as the
# leader (the profile shows whether it serves the client connections), and
# `py-spy record -r 250 -f raw` samples it for SECONDS - 3 s into OUTDIR/1.raw; the bench's
# table goes to OUTDIR/bench.txt. py-spy is a measurement tool, not a dependency of the
# project: `pip install py-spy` into the venv used to measure.
set -u
out=$1; secs=$2; only=$3
py=${PYTHON:-python}
mkdir -p "$out"
$py -m trio_broker bench --seconds "$secs" --only "$only" >"$out/bench.txt" 2>"$out/bench.err" &
bench=$!
cpu() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
n=0
while kill -0 "$bench" 2>/dev/null; do
    if pgrep -P "$bench" -f trio_broker._cli._loadgen >/dev/null; then
        n=$((n + 1))
        sleep 1
        brokers=$(pgrep -P "$bench" -f 'trio_broker node' || true)
        before=""; for p in $brokers; do before="$before $p:$(cpu "$p")"; done
        sleep 1
        leader=""; best=-1
        for pc in $before; do
            p=${pc%%:*}; c=${pc#*:}; d=$(( $(cpu "$p") - c ))
            if [ "$d" -gt "$best" ]; then best=$d; leader=$p; fi
        done
        echo "workload $n: brokers $brokers, leader $leader ($best ticks in 1 s)" >>"$out/leaders.txt"
        py-spy record -r 250 -f raw -d $((secs - 3)) -p "$leader" -o "$out/$n.raw" \
            >>"$out/pyspy.log" 2>&1 || true
        while pgrep -P "$bench" -f trio_broker._cli._loadgen >/dev/null; do sleep 0.2; done
    fi
    sleep 0.2
done
wait "$bench"
