#!/usr/bin/env bats
# 130-pipeline-cuts: a whole pipeline checkpointed as one thing.  stream-ingest
# at the head injects barriers, replay-buffer and stream-sample send their
# state downstream behind each one, sgd-train commits every part as one
# checkpoint (a cut); stopped with SIGTERM to the head, shipped, resumed with
# --resume on every stage, the pipeline ends with the bytes of one that never
# stopped.  Fixtures: the tiny 3-class model and records of helpers.bash.

load helpers
bats_require_minimum_version 1.5.0

LOOPBACK=$MNN_SRC/share/mini-nn/bench/sshd-loopback
SSHD=/usr/sbin/sshd

setup_file() {
    cd "$BATS_FILE_TMPDIR" || return 1
    mk_spec spec.yaml
    mk_data 600 7 >train.csv
    # the reference: the pipeline run once, to the end of its source
    ref ref <train.csv || return 1
    export SSH_DIR=$BATS_FILE_TMPDIR/sshd
    if [[ -x $SSHD ]]; then
        "$LOOPBACK" start "$SSH_DIR" >/dev/null 2>sshd-start.err || true
    fi
}

teardown_file() {
    if [[ -e $SSH_DIR/sshd.pid ]]; then "$LOOPBACK" stop "$SSH_DIR" || true; fi
}

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    F=$BATS_FILE_TMPDIR
    cp "$F/spec.yaml" "$F/train.csv" .
    PIDS=()
}

teardown() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    exec 7>&- 2>/dev/null || true
}

# ---- helpers ------------------------------------------------------------------

# The stages after the head, with --resume CKPT when given one.
STAGES_SAMPLE=(stream-sample -p 0.8 --seed 5)
STAGES_REPLAY=(replay-buffer --ratio 0.5 --capacity 40 --seed 3)

# ref DIR: stream-ingest --every 50 | stream-sample | replay-buffer |
# sgd-train --ckpt-dir DIR on stdin, to its end
ref() {
    stream-ingest -q --every 50 |
        "${STAGES_SAMPLE[@]}" -q | "${STAGES_REPLAY[@]}" -q |
        sgd-train -q -m spec.yaml --ckpt-dir "$1" >/dev/null
}

# start_pipeline ROOT [RESUME]: the pipeline in the background on the FIFO
# src.fifo (held open by the test on fd 3), sgd-train's paths in paths;
# the head's pid in HEAD_PID, every pid in PIDS
start_pipeline() {
    local root=$1 res=()
    [[ -n ${2:-} ]] && res=(--resume "$2")
    rm -f src.fifo paths
    mkfifo src.fifo
    exec 7<>src.fifo
    (echo $BASHPID >ingest.pid; exec 7>&- 8>&-; exec stream-ingest -q --every 50 "${res[@]}" src.fifo) |
        (echo $BASHPID >sample.pid; exec 7>&- 8>&-; exec "${STAGES_SAMPLE[@]}" -q "${res[@]}") |
        (echo $BASHPID >replay.pid; exec 7>&- 8>&-; exec "${STAGES_REPLAY[@]}" -q "${res[@]}") |
        (echo $BASHPID >train.pid; exec 7>&- 8>&-
         if [[ -n ${2:-} ]]; then exec sgd-train -q --resume "$2" --ckpt-dir "$root"
         else exec sgd-train -q -m spec.yaml --ckpt-dir "$root"; fi) >paths 2>train.err &
    LAST_PID=$!
    local f
    for f in ingest sample replay train; do
        wait_for_file "$f.pid"
        PIDS+=("$(cat "$f.pid")")
    done
    HEAD_PID=$(cat ingest.pid)
}

# start_pipeline_dirs ROOT: start_pipeline ROOT, with --ckpt-dir ROOT on
# stream-sample and replay-buffer too
start_pipeline_dirs() {
    local saved_s=("${STAGES_SAMPLE[@]}") saved_r=("${STAGES_REPLAY[@]}")
    STAGES_SAMPLE+=(--ckpt-dir "$1")
    STAGES_REPLAY+=(--ckpt-dir "$1")
    start_pipeline "$1"
    STAGES_SAMPLE=("${saved_s[@]}")
    STAGES_REPLAY=("${saved_r[@]}")
}

wait_for_file() {
    local n=100
    until [[ -s $1 ]]; do ((n-- > 0)) || fail "$1 never appeared"; sleep 0.05; done
}

# cuts_committed: the number of cuts sgd-train printed
cuts_committed() { grep -c -- '-c[0-9]*$' paths 2>/dev/null || true; }

# wait_cuts N: until sgd-train printed N cuts (at most 30 s)
wait_cuts() {
    local n=300
    until (($(cuts_committed) >= $1)); do
        ((n-- > 0)) || fail "$(cuts_committed) cuts committed, $1 awaited: $(cat train.err)"
        sleep 0.1
    done
}

# all_exit STATUS: every stage of the background pipeline exits, the last with STATUS
all_exit() {
    local p
    for p in "${PIDS[@]}"; do wait_gone "$p" 300 || fail "pid $p still runs"; done
    local rc=0
    wait "$LAST_PID" || rc=$?
    [[ $rc == "$1" ]] || fail "the pipeline's last stage exited $rc, not $1: $(cat train.err)"
    PIDS=()
}

# ---- tests ----------------------------------------------------------------------

@test "a cut is one checkpoint: every stage's part, listed with its index, program and hash" {
    local m=$F/ref/latest/manifest.yaml
    run -0 grep -E '^cut: \{id: [0-9]+, stage: 3, program: sgd-train, pending: 0\}$' "$m"
    run -0 grep -c '^  - {index: [012], program: ' "$m"
    assert_output 3
    run -0 grep -E '^  - \{index: 1, program: stream-sample, file: stage-1.stream-sample, bytes: [0-9]+, xxh3: [0-9a-f]{16}\}$' "$m"
    run -0 grep -E '^  - \{index: 2, program: replay-buffer, file: stage-2.replay-buffer, ' "$m"
    # 600 records, a barrier every 50: 11 periodic cuts and the final one
    # (which stands for the one due at record 600), every one committed
    run -0 stream-ingest -q --every 50 train.csv
    assert_equal "$(grep -c '^#!ckpt [0-9]' <<<"$output")" 12
    assert_regex "$(grep '^#!ckpt [0-9]' <<<"$output" | tail -n 1)" '^#!ckpt 12 final$'
    run -0 ckpt-pack --verify "$F/ref"
    assert_equal "$(ls "$F/ref" | grep -c -- '-c[0-9]*$')" 12
    # the model is the one the stream's records train, cuts or not
    stream-ingest -q --every 50 train.csv | "${STAGES_SAMPLE[@]}" -q | "${STAGES_REPLAY[@]}" -q |
        grep -v '^#' >records.csv
    sgd-train -q -m spec.yaml -o plain <records.csv >/dev/null
    cmp plain/model.safetensors "$F/ref/latest/model.safetensors"
    cmp plain/state.yaml "$F/ref/latest/state.yaml"
}

@test "SIGTERM to the head: a stop cut, every stage exits 0; resumed from it: the same bytes" {
    start_pipeline ck
    head -n 230 train.csv >&7
    wait_cuts 3
    kill -TERM "$HEAD_PID"
    all_exit 0
    exec 7>&-
    run -0 grep -E '^cut: \{id: [0-9]+, stage: 3, program: sgd-train, pending: [0-9]+\}$' ck/latest/manifest.yaml
    # the stop cut is in latest, and where the head stopped: no record lost
    run -0 ckpt-resume --inspect ck
    assert_line --partial 'program: stream-ingest'
    # resumed on the same source (checked and skipped to the cut's place)
    stream-ingest -q --resume ck --every 50 train.csv |
        "${STAGES_SAMPLE[@]}" -q --resume ck | "${STAGES_REPLAY[@]}" -q --resume ck |
        sgd-train -q --resume ck --ckpt-dir ck >/dev/null
    same_cut_end ck "$F/ref"
}

@test "the README's recipe: kill -TERM of the whole job stops it at one cut; resumed, the same bytes" {
    # as the README: the stateful stages with --ckpt-dir ck
    start_pipeline_dirs ck
    head -n 330 train.csv >&7
    wait_cuts 4
    # every process of the job gets the signal; only the head acts on it
    kill -TERM "${PIDS[@]}"
    all_exit 0
    exec 7>&-
    stream-ingest -q --resume ck --every 50 train.csv |
        "${STAGES_SAMPLE[@]}" -q --resume ck --ckpt-dir ck |
        "${STAGES_REPLAY[@]}" -q --resume ck --ckpt-dir ck |
        sgd-train -q --resume ck --ckpt-dir ck >/dev/null
    same_cut_end ck "$F/ref"
}

@test "stop, ckpt-ship through the test sshd, resume from the received directory: the same bytes" {
    [[ -x $SSHD ]] || fail "$SSHD is not installed (Debian's openssh-server; ./quickstart check installs it)"
    [[ -s $SSH_DIR/port ]] || fail "sshd-loopback could not start sshd: $(cat "$F/sshd-start.err")"
    start_pipeline ck
    head -n 170 train.csv >&7
    wait_cuts 2
    kill -TERM "$HEAD_PID"
    all_exit 0
    exec 7>&-
    mkdir edge
    run -0 ckpt-ship -q -e "ssh -F $(printf %q "$SSH_DIR/ssh_config")" \
        --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" ck "loopback:$BATS_TEST_TMPDIR/edge/ship"
    # "there": the received directory, a new checkpoint root
    stream-ingest -q --resume edge/ship --every 50 train.csv |
        "${STAGES_SAMPLE[@]}" -q --resume edge/ship | "${STAGES_REPLAY[@]}" -q --resume edge/ship |
        sgd-train -q --resume edge/ship --ckpt-dir edge/ck >/dev/null
    same_cut_end edge/ck "$F/ref"
}

@test "--ckpt-dir on the stateful stages: their parts go through ROOT/.parts; the same cuts" {
    stream-ingest -q --every 50 train.csv | "${STAGES_SAMPLE[@]}" -q --ckpt-dir ck |
        "${STAGES_REPLAY[@]}" -q --ckpt-dir ck >stream.txt
    # in the stream: one line each, no data; the files in ck/.parts
    run -0 grep -c '^#!part [0-9]* [12] [a-z-]* [0-9]* [0-9a-f]\{16\} file$' stream.txt
    assert_output 24
    run -0 grep -c '^#=' stream.txt
    assert_output 12 # stream-ingest's own parts, in the stream
    assert_equal "$(ls -A ck/.parts | wc -l)" 24
    sgd-train -q -m spec.yaml --ckpt-dir ck <stream.txt >/dev/null
    # taken into the cuts: the same bytes as parts sent in the stream
    same_cut_end ck "$F/ref"
    local c
    for c in "$F"/ref/step-*; do
        diff -r -x manifest.yaml "$c" "ck/${c##*/}" || fail "${c##*/} differs"
    done
    run -0 ls -A ck/.parts
    assert_output ''
    # stopped with SIGTERM and resumed, --ckpt-dir on every stage
    rm -r ck
    start_pipeline_dirs ck
    head -n 230 train.csv >&7
    wait_cuts 3
    kill -TERM "$HEAD_PID"
    all_exit 0
    exec 7>&-
    stream-ingest -q --resume ck --every 50 train.csv |
        "${STAGES_SAMPLE[@]}" -q --resume ck --ckpt-dir ck |
        "${STAGES_REPLAY[@]}" -q --resume ck --ckpt-dir ck |
        sgd-train -q --resume ck --ckpt-dir ck >/dev/null
    same_cut_end ck "$F/ref"
}

# peak_train_kb EVERY [RB-OPTS...]: sgd-train's peak resident memory (KiB)
# at the end of stream-ingest --every EVERY wide.csv | replay-buffer
# --capacity 3000 RB-OPTS | sgd-train (the wide records of the test below).
# Under AddressSanitizer, with no quarantine: it would keep the buffers
# that a growing part's reallocations freed resident.
peak_train_kb() {
    local every=$1
    shift
    rm -rf ck kb
    # bounded: a reader that waited for ever would fail the test, not hang it
    timeout 300 stream-ingest -q --every "$every" wide.csv |
        timeout 300 replay-buffer -q --ratio 0.2 --capacity 3000 --seed 1 "$@" |
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0 \
            timeout 300 /usr/bin/time -o kb -f %M sgd-train -q -m wide.yaml --ckpt-dir ck >/dev/null ||
        return 1
    [[ -e ck/latest/stage-1.replay-buffer ]] || return 1
    tail -n 1 kb
}

@test "sgd-train reads ahead across cuts, but holds the parts of a few cuts at a time" {
    # replay-buffer's part: 3,000 records of 200 features, about 4 MB; a cut
    # every 100 records, faster than sgd-train's writer commits them, would
    # pile up in its read-ahead (2,048 records: 512 batches of 4) unbounded
    [[ -x /usr/bin/time ]] || fail "/usr/bin/time is not installed (Debian's time; ./quickstart check installs it)"
    mk_spec wide.yaml
    sed -i 's/^input: 4$/input: 200/' wide.yaml
    awk 'BEGIN { s = 7; for (i = 0; i < 6000; i++) { line = i % 3
        for (j = 0; j < 200; j++) { s = (s * 16807) % 2147483647; line = line sprintf(",%.4f", s / 2147483647) }
        print line } }' >wide.csv
    local once many inband part
    once=$(peak_train_kb 100000 --ckpt-dir ck) || fail "the run with one cut failed"
    part=$(($(stat -c %s ck/latest/stage-1.replay-buffer) / 1024))
    many=$(peak_train_kb 100 --ckpt-dir ck) || fail "the run with 60 cuts failed"
    assert_equal "$(ls ck/step-*/manifest.yaml | wc -l)" 60
    inband=$(peak_train_kb 100) || fail "the run with 60 cuts in the stream failed"
    echo "part $part KiB; sgd-train peak: $once KiB with one cut, $many with 60, $inband with 60 in the stream" >&3
    # the run with 60 cuts: at most a few parts more than the run with one
    assert [ "$many" -lt $((once + 6 * part)) ]
    assert [ "$inband" -lt $((once + 6 * part)) ]
}

@test "--ckpt-dir: a stage's part where the committing stage does not look, or tampered with, is refused" {
    # another directory than sgd-train's: the first cut fails, naming the file
    run -1 --separate-stderr sh -c "stream-ingest -q --every 50 train.csv |
        ${STAGES_REPLAY[*]} -q --ckpt-dir elsewhere | sgd-train -q -m spec.yaml --ckpt-dir ck"
    assert_regex "$stderr" 'stdin:[0-9]+: the part of stage 1 \(replay-buffer\) of cut 1: ck/\.parts/c1-s1\.replay-buffer: No such file or directory \(the stage and this one must share one --ckpt-dir\)'
    [[ ! -e ck/latest ]] || fail "a cut was committed"
    # no --ckpt-dir on sgd-train: it cannot take a part left in a file
    stream-ingest -q --every 50 train.csv | "${STAGES_REPLAY[@]}" -q --ckpt-dir ck >stream.txt
    run -1 --separate-stderr sgd-train -q -m spec.yaml -o model <stream.txt
    assert_regex "$stderr" 'the part of stage 1 of cut 1 is in a file \(its --ckpt-dir\), and this stage has no --ckpt-dir'
    # a byte of a part changed on disk before it was taken: that cut is not committed
    stream-ingest -q --every 50 train.csv | "${STAGES_REPLAY[@]}" -q --ckpt-dir ck2 >stream.txt
    printf 'X' | dd of=ck2/.parts/c2-s1.replay-buffer bs=1 seek=30 conv=notrunc 2>/dev/null
    run -1 --separate-stderr sgd-train -q -m spec.yaml --ckpt-dir ck2 <stream.txt
    assert_regex "$stderr" 'the part of stage 1 \(replay-buffer\) of cut 2: hash [0-9a-f]{16}, but its header says'
    run -0 grep -E '^cut: \{id: 1, ' ck2/latest/manifest.yaml
    [[ -e ck2/.parts/c2-s1.replay-buffer ]] || fail "the damaged part was not kept for a look"
    # a link in its place, to the right bytes: not followed
    stream-ingest -q --every 50 train.csv | "${STAGES_REPLAY[@]}" -q --ckpt-dir ck3 >stream.txt
    mv ck3/.parts/c1-s1.replay-buffer real
    ln -s "$PWD/real" ck3/.parts/c1-s1.replay-buffer
    run -1 --separate-stderr sgd-train -q -m spec.yaml --ckpt-dir ck3 <stream.txt
    assert_regex "$stderr" 'c1-s1\.replay-buffer: Too many levels of symbolic links'
    # --ckpt-dir with no name
    run -2 --separate-stderr replay-buffer --ckpt-dir '' </dev/null
    assert_regex "$stderr" 'empty directory name'
    run -2 --separate-stderr stream-sample -p 0.5 --ckpt-dir '' </dev/null
    assert_regex "$stderr" 'empty directory name'
}

@test "a stage behind an ssh hop takes part: its state travels in the stream" {
    [[ -x $SSHD ]] || fail "$SSHD is not installed (Debian's openssh-server; ./quickstart check installs it)"
    [[ -s $SSH_DIR/port ]] || fail "sshd-loopback could not start sshd: $(cat "$F/sshd-start.err")"
    stream-ingest -q --every 50 train.csv | "${STAGES_SAMPLE[@]}" -q |
        ssh -F "$SSH_DIR/ssh_config" loopback \
            "cd $(printf %q "$BATS_TEST_TMPDIR") && PATH=$(printf %q "$MNN_BIN"):\$PATH replay-buffer -q --ratio 0.5 --capacity 40 --seed 3" |
        sgd-train -q -m spec.yaml --ckpt-dir ck >/dev/null
    same_cut_end ck "$F/ref"
}

@test "grep --line-buffered and awk between the stages break no cut; infer passes cut lines in order" {
    stream-ingest -q --every 50 train.csv | grep --line-buffered -v '^zzz' |
        "${STAGES_SAMPLE[@]}" -q | awk '{ print }' | "${STAGES_REPLAY[@]}" -q |
        sgd-train -q -m spec.yaml --ckpt-dir ck >/dev/null
    same_cut_end ck "$F/ref"
    # infer: the '#' lines at their places among the predictions, also with --forward
    stream-ingest -q --every 7 train.csv >in.txt
    awk '/^#/ { print n ": " $0; next } { n++ }' in.txt >want
    run -0 infer -m "$F/ref/latest" <in.txt
    awk '/^#/ { print n ": " $0; next } { n++ }' <<<"$output" >got
    cmp want got
    run -0 infer -m "$F/ref/latest" --threshold 0.99 --forward "infer -m $(printf %q "$F/ref/latest")" <in.txt
    awk '/^#/ { print n ": " $0; next } { n++ }' <<<"$output" >got
    cmp want got
}

@test "a pipeline of another shape, or another cut, is an error naming the stage" {
    local c=$F/ref/step-*-c3
    c=$(echo $c)
    # no stream-sample: replay-buffer is stage 1, which the cut holds for stream-sample
    run -1 --separate-stderr sh -c "stream-ingest -q --resume $c --every 50 train.csv |
        replay-buffer -q --resume $c >/dev/null"
    assert_regex "$stderr" 'stage 1 of cut 3 is stream-sample, not replay-buffer: a pipeline of another shape'
    # sgd-train resumed at another index than the one that committed the cut
    run -1 --separate-stderr sh -c "stream-ingest -q --resume $c --every 50 train.csv |
        sgd-train -q --resume $c --ckpt-dir ck2"
    assert_regex "$stderr" 'committed by stage 3, but 1 stages take part before this one'
    # a stage resumed from another cut than the head
    run -1 --separate-stderr sh -c "stream-ingest -q --resume $c --every 50 train.csv |
        stream-sample -q -p 0.8 --seed 5 --resume $(echo $F/ref/step-*-c4) >/dev/null"
    assert_regex "$stderr" 'cut 4, but the head of the pipeline resumed from cut 3'
    # --resume without the head resumed
    run -1 --separate-stderr sh -c "replay-buffer -q --resume $c <train.csv >/dev/null"
    assert_regex "$stderr" 'resume its head too'
    run -1 --separate-stderr sh -c "sgd-train -q --resume $c --ckpt-dir ck3 <train.csv"
    assert_regex "$stderr" 'resume its head too'
}

@test "a stage that dies: no half cut; latest names a complete cut; the rest exit 1" {
    start_pipeline ck
    head -n 230 train.csv >&7
    wait_cuts 3
    kill -9 "$(cat replay.pid)"
    # the head, waiting for its source, sees the end of its reader at its next write
    exec 7>&-
    all_exit 1
    run -0 grep -E 'stdin ended after cut [0-9]+ without the pipeline.s stop or final cut' train.err
    run -0 ckpt-pack --verify ck
    # no temporary or partial directory is taken for a cut
    run -0 find ck -maxdepth 1 -name 'step-*'
    local d
    for d in $output; do run -0 ckpt-pack --verify "$d"; done
    # resumed from latest: the same bytes at the end
    stream-ingest -q --resume ck --every 50 train.csv |
        "${STAGES_SAMPLE[@]}" -q --resume ck | "${STAGES_REPLAY[@]}" -q --resume ck |
        sgd-train -q --resume ck --ckpt-dir ck >/dev/null
    same_cut_end ck "$F/ref"
}

@test "a damaged stage file is refused by --verify and by every --resume" {
    cp -r "$F/ref" ck
    local c
    c=$(readlink ck/latest)
    c=ck/$c
    printf 'X' | dd of="$c/stage-2.replay-buffer" bs=1 seek=20 conv=notrunc 2>/dev/null
    run -1 ckpt-pack --verify "$c"
    assert_output --partial 'stage-2.replay-buffer'
    local stage
    for stage in "stream-ingest -q --resume $c train.csv" \
        "stream-sample -q -p 0.8 --resume $c" "replay-buffer -q --resume $c" \
        "sgd-train -q --resume $c --ckpt-dir ck2"; do
        run -1 --separate-stderr sh -c "$stage </dev/null >/dev/null"
        assert_regex "$stderr" 'stage-2.replay-buffer: hash does not match'
    done
}

@test "a part damaged on the way is refused: that cut is not committed" {
    # one base64 character of the replay buffer's part of cut 2 changed
    run -1 --separate-stderr sh -c "stream-ingest -q --every 50 train.csv | ${STAGES_SAMPLE[*]} -q |
        ${STAGES_REPLAY[*]} -q | awk '/^#!part 2 2 / { p = 1; print; next }
            p && /^#=/ { sub(/^#=./, \"#=\" (substr(\$0, 3, 1) == \"A\" ? \"B\" : \"A\")); p = 0 } { print }' |
        sgd-train -q -m spec.yaml --ckpt-dir ck >/dev/null"
    assert_regex "$stderr" 'the part of stage 2 \(replay-buffer\) of cut 2: hash [0-9a-f]{16}, but its header says'
    # cut 1 is the last one committed; nothing of cut 2, not even a temporary
    run -0 grep -E '^cut: \{id: 1, stage: 3, ' ck/latest/manifest.yaml
    run -0 ls -A ck
    refute_output --partial -c2
    refute_output --partial .tmp
}
