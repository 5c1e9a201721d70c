#!/usr/bin/env bats
# 150-mpi: sgd-train data-parallel under Open MPI's mpirun.  The same bytes
# for the same ranks; with --shards, the same bytes for every number of
# ranks that owns them whole, mpirun or not; checkpoints by rank 0 alone;
# resumption on other ranks; SIGUSR2 (which mpirun forwards) and kill -9 of
# a rank; --input shards; ranks in separate network namespaces over TCP; and
# every refusal ends every rank, with one message.  Fixtures: the tiny
# 3-class model and records of helpers.bash.

load helpers
bats_require_minimum_version 1.5.0

setup_file() {
    cd "$BATS_FILE_TMPDIR" || return 1
    mk_spec spec.yaml
    mk_data 600 7 >train.csv
    head -n 300 train.csv >first.csv
    tail -n 300 train.csv >rest.csv
}

setup() {
    [[ ${MNN_MPI:-} == yes ]] ||
        fail "sgd-train was built without MPI (Debian packages openmpi-bin libopenmpi-dev; ./quickstart check installs them)"
    need mpirun openmpi-bin
    cd "$BATS_TEST_TMPDIR" || return 1
    F=$BATS_FILE_TMPDIR
    # root runs the suite here; 4 ranks on 2 cores; a rank told to end has
    # 10 s before mpirun kills it
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_odls_base_sigkill_timeout=10
    # Open MPI's own allocations live until exit: not sgd-train's leaks
    # (its plugins stay loaded and the stacks are unwound whole, so that the
    # suppressions find Open MPI's frames)
    export OMPI_MCA_mca_base_component_disable_dlclose=1
    export LSAN_OPTIONS="suppressions=$MNN_SRC/t/lsan-mpi.supp:print_suppressions=0:fast_unwind_on_malloc=0"
    BG_PID=
}

teardown() {
    [[ -n ${BG_PID:-} ]] && kill -9 "$BG_PID" 2>/dev/null
    if [[ -n ${NETNS:-} ]]; then
        ip netns del "${NETNS}0" 2>/dev/null
        ip netns del "${NETNS}1" 2>/dev/null
        ip link del "${NETNS}br" 2>/dev/null
    fi
    true
}

# mpi N ARG...: sgd-train on N ranks, bounded (a hang fails the test)
mpi() {
    local n=$1
    shift
    timeout -k 10 120 mpirun -n "$n" "$MNN_BIN/sgd-train" "$@"
}

# weights CKPT: the hashes of what the training computed (the model and the
# optimizer), which must not depend on the ranks
weights() {
    cat "$1/model.safetensors" "$1/optimizer.safetensors" | cksum
}

@test "the same ranks twice: the same bytes; the checkpoint records ranks and shards" {
    mpi 2 -q -m "$F/spec.yaml" -o a <"$F/train.csv" >out.a
    mpi 2 -q -m "$F/spec.yaml" -o b <"$F/train.csv" >out.b
    assert_equal "$(cat out.a)" a
    assert_equal "$(weights a)" "$(weights b)"
    cmp a/state.yaml b/state.yaml
    assert_equal "$(field a/state.yaml ranks)" 2
    assert_equal "$(field a/state.yaml shards)" 2
    assert_equal "$(field a/state.yaml records_seen)" 600
}

@test "--shards 4: the same bytes on 1, 2 and 4 ranks and without mpirun" {
    sgd-train -q -m "$F/spec.yaml" --shards 4 -o s0 <"$F/train.csv" >/dev/null
    mpi 1 -q -m "$F/spec.yaml" --shards 4 -o s1 <"$F/train.csv" >/dev/null
    mpi 2 -q -m "$F/spec.yaml" --shards 4 -o s2 <"$F/train.csv" >/dev/null
    mpi 4 -q -m "$F/spec.yaml" --shards 4 -o s4 <"$F/train.csv" >/dev/null
    for d in s1 s2 s4; do
        assert_equal "$(weights $d)" "$(weights s0)"
        # the state differs in the ranks alone
        diff <(grep -v '^ranks:' s0/state.yaml) <(grep -v '^ranks:' $d/state.yaml)
    done
    assert_equal "$(field s4/state.yaml ranks)" 4
    # the sum through messages (as between hosts) is the same as through
    # the window the ranks of one host share
    MNN_MPI_SHARED=0 mpi 4 -q -m "$F/spec.yaml" --shards 4 -o m4 <"$F/train.csv" >/dev/null
    MNN_MPI_SHARED=0 mpi 2 -q -m "$F/spec.yaml" --shards 4 -o m2 <"$F/train.csv" >/dev/null
    assert_equal "$(weights m4)" "$(weights s0)"
    assert_equal "$(weights m2)" "$(weights s0)"
    # the shards change the rounding: 1 shard is another result
    sgd-train -q -m "$F/spec.yaml" -o plain <"$F/train.csv" >/dev/null
    [[ $(weights plain) != "$(weights s0)" ]]
}

@test "one rank under mpirun, without --shards, writes what sgd-train alone writes" {
    sgd-train -q -m "$F/spec.yaml" -o alone <"$F/train.csv" >/dev/null
    mpi 1 -q -m "$F/spec.yaml" -o one <"$F/train.csv" >/dev/null
    assert_equal "$(weights one)" "$(weights alone)"
    cmp alone/state.yaml one/state.yaml
    run -1 grep -c '^ranks:' one/state.yaml
    assert_output 0
}

@test "resumed on other ranks (2, then 4, then none): bit-exact with a training that never stopped" {
    sgd-train -q -m "$F/spec.yaml" --shards 4 -o whole <"$F/train.csv" >/dev/null
    mpi 2 -q -m "$F/spec.yaml" --shards 4 -o p1 <"$F/first.csv" >/dev/null
    head -n 100 "$F/rest.csv" >r1.csv
    tail -n 200 "$F/rest.csv" >r2.csv
    mpi 4 --resume p1 -o p2 <r1.csv >/dev/null 2>err
    sgd-train -q --resume p2 -o p3 <r2.csv >/dev/null
    assert_equal "$(weights p3)" "$(weights whole)"
    assert_equal "$(field p3/state.yaml records_seen)" 600
    # no warning: the shards stayed
    run ! grep 'not bit-exact' err
    # ckpt-resume says which ranks it goes on on, and that it is bit-exact
    run -0 --separate-stderr timeout 120 mpirun -n 2 "$MNN_BIN/ckpt-resume" p1 -o p4 <r1.csv
    [[ $stderr == *"p1 was trained on 2 ranks with 4 shards; going on on 2 ranks with 4: bit-exact"* ]]
    assert_equal "$(weights p4)" "$(weights p2)"
}

@test "a training of one process resumed on 2 ranks: said not to be bit-exact, and goes on" {
    sgd-train -q -m "$F/spec.yaml" -o p1 <"$F/first.csv" >/dev/null
    run -0 --separate-stderr mpi 2 --resume p1 -o p2 <"$F/rest.csv"
    [[ $stderr == *"p1 was trained with 1 shard, this training has 2"*"not bit-exact"* ]]
    assert_equal "$(field p2/state.yaml records_seen)" 600
    assert_equal "$(field p2/state.yaml shards)" 2
    run -0 --separate-stderr timeout 120 mpirun -n 2 "$MNN_BIN/ckpt-resume" p1 -o p3 <"$F/rest.csv"
    [[ $stderr == *"going on on 2 ranks with 2: not bit-exact"* ]]
}

# the pids of the sgd-train ranks under mpirun BG_PID (the rank r: its
# OMPI_COMM_WORLD_RANK)
rank_pid() {
    local p
    for p in $(pgrep -x sgd-train); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" &&
            { echo "$p"; return 0; }
    done
    return 1
}

# start_stalled N ARG...: mpirun -n N sgd-train ARG... --ckpt-every 25 in
# the background on in.fifo, fed first.csv 100 records (25 steps) at a time,
# each chunk once the checkpoint of the one before is printed (so none is
# skipped for a busy writer), then held open: a stream that stalls at step
# 75.  Stdout to out, stderr to err.
start_stalled() {
    local n=$1 i
    shift
    rm -f in.fifo
    mkfifo in.fifo
    mpirun -n "$n" "$MNN_BIN/sgd-train" "$@" --ckpt-every 25 <in.fifo >out 2>err &
    BG_PID=$!
    open_writer 7 in.fifo "$BG_PID" || fail "mpirun did not open its input"
    for i in 1 2 3; do
        sed -n "$((i * 100 - 99)),$((i * 100))p" "$F/first.csv" >&7
        wait_for_match out "step-000000$((i * 25))\$" 600 ||
            fail "no checkpoint at step $((i * 25)): $(cat out err)"
    done
}

@test "SIGUSR2 to mpirun stops every rank at one step boundary: one final checkpoint, exit 3; --skip-seen goes on bit-exactly" {
    mpi 2 -q -m "$F/spec.yaml" -o whole <"$F/train.csv" >/dev/null
    start_stalled 2 -m "$F/spec.yaml" --ckpt-dir ck
    kill -USR2 "$BG_PID"
    bg_exit 3 600
    exec 7>&-
    assert_equal "$(tail -n 1 out)" ck/step-00000075
    grep -q 'stopping on a signal after 300 records' err
    # one final checkpoint, not one per rank
    assert_equal "$(ls ck | grep -c step-)" 3
    mpi 2 -q --resume ck --skip-seen -o rest <"$F/train.csv" >/dev/null
    assert_equal "$(weights rest)" "$(weights whole)"
}

@test "kill -9 of a rank: mpirun ends the job, latest verifies, and one rank fewer goes on bit-exactly" {
    mpi 2 -q -m "$F/spec.yaml" -o whole <"$F/train.csv" >/dev/null
    start_stalled 2 -m "$F/spec.yaml" --ckpt-dir ck
    local p
    p=$(rank_pid 1) || fail "no rank 1"
    kill -9 "$p"
    wait_gone "$BG_PID" 600 || fail "mpirun did not end the job"
    wait "$BG_PID" && fail "mpirun exited 0 after a rank was killed"
    BG_PID=
    exec 7>&-
    run -0 ckpt-resume --inspect ck/latest
    # on 1 rank: its 2 shards kept, so bit-exact with 2 ranks throughout
    run -0 --separate-stderr ckpt-resume ck/latest --skip-seen -o rest <"$F/train.csv"
    [[ $stderr == *"trained on 2 ranks with 2 shards; going on on 1 rank with 2: bit-exact"* ]]
    assert_equal "$(weights rest)" "$(weights whole)"
}

@test "--input FILE: every rank reads its own file (%r); the same bytes twice; it ends with the longest" {
    cp "$F/train.csv" part0.csv
    head -n 300 "$F/train.csv" >part1.csv
    mpi 2 -q -m "$F/spec.yaml" --input 'part%r.csv' -o a </dev/null >/dev/null
    mpi 2 -q -m "$F/spec.yaml" --input 'part%r.csv' -o b </dev/null >/dev/null
    assert_equal "$(weights a)" "$(weights b)"
    # batch 4 on 2 ranks: 2 records of each per step; once rank 1's 300
    # have ended, the steps are rank 0's 2
    assert_equal "$(field a/state.yaml records_seen)" 900
    assert_equal "$(field a/state.yaml step)" 300
    # whole parts are the shards stdin's minibatches would have: the same
    # records interleaved 2 by 2 on stdin give the same bytes
    head -n 600 part0.csv | awk 'NR % 4 == 1 || NR % 4 == 2' >q0.csv
    head -n 600 part0.csv | awk 'NR % 4 == 3 || NR % 4 == 0' >q1.csv
    mpi 2 -q -m "$F/spec.yaml" --input 'q%r.csv' -o q </dev/null >/dev/null
    mpi 2 -q -m "$F/spec.yaml" -o qs <part0.csv >/dev/null
    assert_equal "$(weights q)" "$(weights qs)"
    # one process reads the one file as it reads stdin
    sgd-train -q -m "$F/spec.yaml" --input part0.csv -o one </dev/null >/dev/null
    sgd-train -q -m "$F/spec.yaml" -o one-stdin <part0.csv >/dev/null
    assert_equal "$(weights one)" "$(weights one-stdin)"
    # one rank's file missing: every rank ends, exit 1, the file named
    run -1 --separate-stderr mpi 2 -q -m "$F/spec.yaml" --input 'nope%r.csv' -o c </dev/null
    [[ $stderr == *"--input nope0.csv: No such file or directory"* ]]
    run -1 --separate-stderr mpi 2 -q -m "$F/spec.yaml" --input 'part%r.csv.%r' -o c </dev/null
    [[ ! -e c ]]
    # a bad record in rank 1's file: its line is named, nobody waits for ever
    { head -n 10 "$F/train.csv"; echo '1,2,x,4,5'; } >part1.csv
    run -1 --separate-stderr mpi 2 -q -m "$F/spec.yaml" --input 'part%r.csv' -o c </dev/null
    [[ $stderr == *"part1.csv:11:"* ]]
    [[ ! -e c ]]
    run -2 sgd-train -q --resume a --skip-seen --input 'part%r.csv'
}

@test "ckpt-resume of an archive under mpirun: every rank its own copy" {
    mpi 2 -q -m "$F/spec.yaml" --shards 2 -o a <"$F/first.csv" >/dev/null
    ckpt-pack -q -o a.tar.zst a
    mpi 2 -q --resume a -o direct <"$F/rest.csv" >/dev/null
    mkdir wd
    timeout 120 mpirun -n 2 "$MNN_BIN/ckpt-resume" -q -w wd a.tar.zst -o packed <"$F/rest.csv"
    assert_equal "$(weights packed)" "$(weights direct)"
    [[ -d wd/rank-0/a && -d wd/rank-1/a ]]
}

@test "refusals end every rank with one message: shards the ranks cannot own, more than the batch, running normalization" {
    run -2 --separate-stderr mpi 3 -q -m "$F/spec.yaml" --shards 4 -o x <"$F/train.csv"
    [[ $stderr == *"--shards 4 on 3 ranks"* ]]
    assert_equal "$(grep -c -- '--shards 4 on 3 ranks' <<<"$stderr")" 1
    run -2 --separate-stderr mpi 2 -q -m "$F/spec.yaml" --shards 8 -o x <"$F/train.csv"
    [[ $stderr == *"8 shards (--shards, or one per rank) but a batch of 4"* ]]
    mk_spec norm.yaml 'normalize: running'
    run -2 --separate-stderr mpi 2 -q -m norm.yaml -o x <"$F/train.csv"
    [[ $stderr == *"running normalization"*"cannot be split"* ]]
    run -2 --separate-stderr sgd-train -q -m norm.yaml --shards 2 -o x <"$F/train.csv"
    [[ $stderr == *"running normalization"* ]]
    run -0 sgd-train -q -m norm.yaml -o x <"$F/train.csv"
}

@test "a refusal of rank 0 alone (its output exists, its checkpoint root is taken) ends every rank" {
    touch taken
    run -1 --separate-stderr mpi 2 -q -m "$F/spec.yaml" -o taken <"$F/train.csv"
    [[ $stderr == *"taken: already exists"* ]]
    sgd-train -q -m "$F/spec.yaml" --ckpt-dir root <"$F/first.csv" >/dev/null
    run -1 --separate-stderr mpi 2 -q -m "$F/spec.yaml" --ckpt-dir root <"$F/train.csv"
    [[ $stderr == *root* ]]
    # the help once, from rank 0
    run -0 mpi 2 --help
    assert_equal "$(grep -c '^Usage:' <<<"$output")" 1
}

@test "a bad record on rank 0's stdin: every rank ends with exit 1, the line named; checkpoints so far stay" {
    { head -n 200 "$F/train.csv"; echo '0,1,2,3'; cat "$F/rest.csv"; } >bad.csv
    run -1 --separate-stderr mpi 2 -q -m "$F/spec.yaml" --ckpt-dir ck --ckpt-every 10 <bad.csv
    [[ $stderr == *"stdin:201:"* ]]
    # what was committed before the bad line stays (a busy writer skips some)
    run -0 ckpt-resume --inspect ck/latest
    (($(field ck/latest/state.yaml step) <= 50))
    # --on-error=skip goes on past it
    run -0 --separate-stderr mpi 2 -q -m "$F/spec.yaml" --on-error=skip -o ok <bad.csv
    assert_equal "$(field ok/state.yaml records_seen)" 500
}

@test "a damaged ranks or shards in state.yaml is refused" {
    mpi 2 -q -m "$F/spec.yaml" -o a <"$F/first.csv" >/dev/null
    for bad in 'ranks: 0' 'shards: 70000' 'ranks: x'; do
        rm -rf b && cp -r a b
        sed -i "s/^${bad%%:*}: .*/$bad/" b/state.yaml
        rehash b state.yaml
        run -1 --separate-stderr sgd-train -q --resume b -o c <"$F/rest.csv"
        [[ $stderr == *"${bad%%:*}"* ]]
    done
}

@test "ranks in two network namespaces, over TCP: the same bytes as on shared memory" {
    need ip iproute2
    NETNS=mnn$$
    ip link add "${NETNS}br" type bridge
    ip addr add 10.77.0.254/24 dev "${NETNS}br"
    ip link set "${NETNS}br" up
    local i
    for i in 0 1; do
        ip netns add "$NETNS$i"
        ip link add "${NETNS}v$i" type veth peer name eth0 netns "$NETNS$i"
        ip link set "${NETNS}v$i" master "${NETNS}br" up
        ip -n "$NETNS$i" addr add "10.77.0.$((i + 1))/24" dev eth0
        ip -n "$NETNS$i" link set eth0 up
        ip -n "$NETNS$i" link set lo up
    done
    printf '%s slots=1\n' "${NETNS}0" "${NETNS}1" >hosts
    # mpirun's "ssh": a shell in the namespace named as the host
    printf '%s\n' '#!/bin/sh' 'h=$1; shift' 'exec ip netns exec "$h" sh -c "$*"' >agent
    chmod +x agent
    mpi 2 -q -m "$F/spec.yaml" --shards 2 -o shm <"$F/train.csv" >/dev/null
    timeout -k 10 120 mpirun -n 2 --hostfile hosts --mca plm_rsh_agent "$PWD/agent" \
        --mca oob_tcp_if_include 10.77.0.0/24 --mca btl tcp,self \
        --mca btl_tcp_if_include 10.77.0.0/24 \
        "$MNN_BIN/sgd-train" -q -m "$F/spec.yaml" --shards 2 -o tcp <"$F/train.csv" >/dev/null
    assert_equal "$(weights tcp)" "$(weights shm)"
}

@test "--help and the man page tell how to run under mpirun" {
    run -0 sgd-train --help
    [[ $output == *"mpirun -n R"* && $output == *"--shards S"* && $output == *"--input FILE"* ]]
    [[ $output == *SIGUSR2* ]]
    grep -q "^\.Sh SCALING OUT" "$MNN_SRC/man/sgd-train.1"
}
