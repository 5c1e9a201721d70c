#!/usr/bin/env bats
# 135-cut-kill: the pipeline stream-ingest | stream-sample | replay-buffer |
# sgd-train over Fashion-MNIST's 60,000 training records (Debian's
# dataset-fashion-mnist), every process killed with kill -9 at 30 moments
# chosen from what the pipeline did (right after a cut is committed, while
# the next barrier is on its way, a few barriers later) and resumed from
# ck/latest each time: the final model and every stage's final state are
# those of a run that never stopped, byte for byte.  stream-sample sends its
# part in the stream, replay-buffer leaves its in ROOT/.parts (--ckpt-dir):
# both ways are killed at every moment.  The same with a source that cannot
# be read again, a FIFO fed once, and stream-ingest --log: what the FIFO
# gave up is in the log (splice), and the resumed head replays it.

load helpers
bats_require_minimum_version 1.5.0

setup_file() {
    cd "$BATS_FILE_TMPDIR" || return 1
    local dir=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    [[ -r $dir/train-images-idx3-ubyte.gz ]] || return 0 # the test says why
    "$MNN_SRC/share/mini-nn/datasets/fashion-mnist" train >fm.csv || return 1
    cp "$MNN_SRC/share/mini-nn/models/fmnist-small.yaml" spec.yaml
    pipeline ref fm.csv >/dev/null 2>ref.err || return 1
}

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    F=$BATS_FILE_TMPDIR
    [[ -s $F/fm.csv ]] ||
        fail "Fashion-MNIST is missing (Debian package dataset-fashion-mnist; ./quickstart check installs it)"
    [[ -e $F/ref/latest/stage-2.replay-buffer ]] || fail "the reference run failed: $(cat "$F/ref.err")"
    cp "$F/spec.yaml" .
    PIDS=()
}

teardown() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [[ -n ${FEED_PID:-} ]] && kill -9 "$FEED_PID" 2>/dev/null || true
    exec 8>&- 2>/dev/null || true
}

# pipeline ROOT SOURCE [INGEST-OPTION]...: the pipeline, to the end of
# SOURCE; resumed from $RES when it is set
pipeline() {
    local root=$1 src=$2 res=()
    shift 2
    [[ -n ${RES:-} ]] && res=(--resume "$RES")
    stream-ingest -q --every 500 "$@" "${res[@]}" "$src" |
        stream-sample -q -p 0.9 --seed 2 "${res[@]}" |
        replay-buffer -q --ratio 0.25 --capacity 500 --seed 4 --ckpt-dir "$root" "${res[@]}" |
        if [[ -n ${RES:-} ]]; then sgd-train -q --resume "$RES" --ckpt-dir "$root"
        else sgd-train -q -m spec.yaml --ckpt-dir "$root"; fi
}

# start ROOT SOURCE [INGEST-OPTION]...: the pipeline in the background,
# resumed from ROOT/latest when there is one; the head's notes (-v: one a
# barrier) in notes, sgd-train's paths in paths, the pids in PIDS
start() {
    local root=$1 src=$2 res=()
    shift 2
    [[ -e $root/latest ]] && res=(--resume "$root")
    rm -f notes paths ./*.pid
    (echo $BASHPID >1.pid; exec 7>&- 8>&-; exec stream-ingest -v --every 500 "$@" "${res[@]}" "$src" 2>notes) |
        (echo $BASHPID >2.pid; exec 7>&- 8>&-; exec stream-sample -q -p 0.9 --seed 2 "${res[@]}") |
        (echo $BASHPID >3.pid; exec 7>&- 8>&-; exec replay-buffer -q --ratio 0.25 --capacity 500 --seed 4 --ckpt-dir "$root" "${res[@]}") |
        (echo $BASHPID >4.pid; exec 7>&- 8>&-
         if ((${#res[@]})); then exec sgd-train -q "${res[@]}" --ckpt-dir "$root"
         else exec sgd-train -q -m spec.yaml --ckpt-dir "$root"; fi) >paths 2>train.err &
    LAST=$!
    local i n
    PIDS=()
    for i in 1 2 3 4; do
        n=100
        until [[ -s $i.pid ]]; do ((n-- > 0)) || fail "stage $i did not start"; sleep 0.05; done
        PIDS+=("$(cat "$i.pid")")
    done
}

# until_count FILE REGEX N: until FILE has N lines matching REGEX (0), or
# the pipeline ended (1); 2 after 60 s
# (polled every 20 ms: the pipeline commits a cut every few milliseconds, and
# a coarser poll would let it run far past the moment)
until_count() {
    local n=3000
    until (($(grep -cE -- "$2" "$1" 2>/dev/null || true) >= $3)); do
        kill -0 "$LAST" 2>/dev/null || return 1
        ((n-- > 0)) || { echo "waited 60 s for $3 lines like $2 in $1" >&2; return 2; }
        sleep 0.02
    done
}

# kill9: every process of the pipeline, at once
kill9() {
    kill -9 "${PIDS[@]}" 2>/dev/null || true
    local p
    for p in "${PIDS[@]}"; do wait_gone "$p" 100 || fail "pid $p survived kill -9"; done
    wait "$LAST" 2>/dev/null || true
    PIDS=()
}

# the 30 moments, relative to what this run committed: after its first new
# cut; after the head sent the barrier after that one (in flight); after two
# more barriers left the head (a cut may be being written)
crash_and_resume() {
    local src=$1 k
    shift
    local rc seen
    for k in $(seq 1 30); do
        start ck "$src" "$@"
        rc=0
        case $((k % 3)) in
        0) until_count paths '-c[0-9]+$' 1 || rc=$? ;;
        1) until_count paths '-c[0-9]+$' 1 || rc=$?
           seen=$(grep -c 'cut ' notes || true)
           ((rc)) || until_count notes 'cut ' $((seen + 1)) || rc=$? ;;
        2) until_count notes 'cut ' 3 || rc=$? ;;
        esac
        ((rc != 2)) || fail "crash $k: the pipeline made no progress: $(cat train.err)"
        kill9
        ((rc == 0)) || break # it ended before the moment came
        run -0 ckpt-pack --verify ck
    done
    ((k > 20)) || fail "the pipeline ended after $k of 30 crashes: too few moments: $(tail -n 3 notes train.err)"
}

@test "kill -9 of every stage at 30 moments, resumed from latest each time: the bytes of a run that never stopped" {
    crash_and_resume "$F/fm.csv"
    # the rest, to the end
    RES=ck pipeline ck "$F/fm.csv" >/dev/null
    same_cut_end ck "$F/ref"
}

@test "the same with a FIFO fed once and --log: nothing that left the FIFO is lost" {
    rm -f src.fifo
    mkfifo src.fifo
    # the test holds the FIFO open (fd 8), so that what is in it outlives a
    # killed reader, as a sensor's pipe would; cat feeds it once
    exec 8<>src.fifo
    cat "$F/fm.csv" >src.fifo 8>&- &
    FEED_PID=$!
    crash_and_resume src.fifo --log L --ckpt-dir ck
    # the rest: resumed once more; when the feeder is done, the FIFO ends
    start ck src.fifo --log L --ckpt-dir ck
    wait_gone "$FEED_PID" 3000 || fail "the feeder did not finish in 300 s: $(tail -n 3 notes train.err)"
    exec 8>&-
    local p
    for p in "${PIDS[@]}"; do wait_gone "$p" 3000 || fail "pid $p still runs: $(tail -n 3 notes train.err)"; done
    wait "$LAST" || fail "the last run failed: $(cat train.err)"
    PIDS=()
    same_cut_end ck "$F/ref"
}
