#!/usr/bin/env bats
# sgd-train checkpoints: --ckpt-dir roots, latest, retention, signals, the
# two levels, bit-exact --resume, and kill -9 at random moments.

load helpers
bats_require_minimum_version 1.5.0

setup() {
    fixtures
}

# ckpt_verify DIR: DIR (or DIR/latest) is a whole checkpoint: every file
# matches its manifest and the model loads.
ckpt_verify() {
    ckpt-pack -q --verify "$1" && infer -m "$1" </dev/null
}

# straight_and_split OPTIONS K: the model of a straight run over train.csv
# against one that stops after K steps (input cut short) and is resumed with
# --skip-seen over the whole input: identical bytes.
straight_and_split() {
    local k=$1
    shift
    sgd-train -q -m spec.yaml -o straight "$@" <train.csv >/dev/null
    head -n $((k * 4)) train.csv | sgd-train -q -m spec.yaml -o part "$@" >/dev/null
    assert_equal "$(field part/state.yaml step)" "$k"
    run -0 sgd-train -q --resume part --skip-seen -o resumed <train.csv
    run -0 cmp straight/model.safetensors resumed/model.safetensors
    run -0 cmp straight/optimizer.safetensors resumed/optimizer.safetensors
    run -0 cmp straight/state.yaml resumed/state.yaml
    rm -rf straight part resumed
}

# in_order EXPECTED...: the lines of $output are some of EXPECTED, in order,
# and end with the last one (a checkpoint asked for while the writer is busy
# is skipped; the final one never is).
in_order() {
    local want=("$@") i=0 line
    for line in "${lines[@]}"; do
        while ((i < ${#want[@]})) && [[ ${want[i]} != "$line" ]]; do i=$((i + 1)); done
        ((i < ${#want[@]})) || fail "unexpected or out of order: $line (in: ${lines[*]})"
    done
    assert_equal "${lines[-1]}" "${want[-1]}"
}

@test "--ckpt-dir: step-N checkpoints, latest, their paths on stdout in order" {
    run -0 --separate-stderr sgd-train -m spec.yaml --ckpt-dir ck --ckpt-every 40 <train.csv
    in_order ck/step-00000040 ck/step-00000080 ck/step-00000120 ck/step-00000150
    # each one asked for is either written or reported as skipped
    local skipped
    skipped=$(grep -c 'skipped: the previous one is still being written' <<<"$stderr" || true)
    assert_equal $((${#lines[@]} + skipped)) 4
    assert_equal "$(readlink ck/latest)" step-00000150
    local p
    for p in "${lines[@]}"; do ckpt_verify "$p" || fail "$p does not verify"; done
    # no --out by default when --ckpt-dir is given
    [[ ! -e model.ckpt ]]
    run -0 grep -x 'parent: null' "${lines[0]}/manifest.yaml"
    run -0 infer -m ck <test.csv
    assert_equal "${#lines[@]}" 150
}

@test "each checkpoint names the one before it as its parent" {
    # the writer keeps up, nothing is skipped
    stepwise 15 --ckpt-dir ck
    run -0 cat paths
    assert_output "$(for i in $(seq 10 10 150); do printf 'ck/step-%08d\n' "$i"; done)"
    run -0 grep -x 'parent: null' ck/step-00000010/manifest.yaml
    run -0 grep -x 'parent: "step-00000020"' ck/step-00000030/manifest.yaml
    run -0 grep -x 'parent: "step-00000140"' ck/step-00000150/manifest.yaml
}

@test "--keep N keeps exactly the newest N" {
    stepwise 15 --ckpt-dir ck --keep 2
    run -0 ls -A ck
    assert_output $'latest\nstep-00000140\nstep-00000150'
    stepwise 15 --ckpt-dir ck3 --keep 3
    run -0 ls -A ck3
    assert_output $'latest\nstep-00000130\nstep-00000140\nstep-00000150'
}

@test "--keep never removes the checkpoint latest names, newest or not" {
    stepwise 15 --ckpt-dir ck
    # going on from an old one (a rollback): its successor is latest, and
    # older than the newest
    head -n 4 train.csv | sgd-train -q --resume ck/step-00000020 --ckpt-dir ck --keep 1 >/dev/null
    run -0 ls -A ck
    assert_output $'latest\nstep-00000021\nstep-00000150'
    assert_equal "$(readlink ck/latest)" step-00000021
}

@test "two writers on one --ckpt-dir: the second refuses at its start; every checkpoint printed verifies" {
    mkfifo in
    sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-every 10 <in >paths &
    local pid=$! p
    exec 7>in
    head -n 200 train.csv >&7
    # a checkpoint printed: the first writer holds the root
    wait_for_match paths 'ck/step-' 600 || { kill -9 "$pid"; fail "no checkpoint from the first writer"; }
    run -1 --separate-stderr sgd-train -q -m spec.yaml --ckpt-dir ck <train.csv
    assert_output ""
    assert_equal "$stderr" "sgd-train: ck: another process is writing checkpoints here (the root is locked); use another --ckpt-dir"
    run -1 --separate-stderr ckpt-resume -q ck --ckpt-dir ck <train.csv
    assert_regex "$stderr" 'ck: another process is writing checkpoints here \(the root is locked\)'
    # --ckpt-local is a root too
    run -1 --separate-stderr sgd-train -q -m spec.yaml --ckpt-dir other --ckpt-local ck <train.csv
    assert_regex "$stderr" '^sgd-train: ck: another process is writing checkpoints here'
    tail -n +201 train.csv >&7
    exec 7>&-
    wait "$pid" || fail "the first writer failed"
    assert_equal "$(tail -n 1 paths)" ck/step-00000150
    for p in $(cat paths); do ckpt_verify "$p" || fail "$p does not verify"; done
    # the lock goes with its writer
    head -n 4 train.csv | sgd-train -q --resume ck --ckpt-dir ck >/dev/null ||
        fail "the root is still locked"
}

@test "a training from scratch refuses a root that holds checkpoints; nothing there changes" {
    stepwise 5 --ckpt-dir ck
    local before
    before=$(find ck -printf '%P %y %s %T@ %l\n' | sort)
    run -1 --separate-stderr sgd-train -q -m spec.yaml --ckpt-dir ck <train.csv
    assert_output ""
    assert_equal "$stderr" "sgd-train: --ckpt-dir ck: holds the checkpoints of a training already (the newest: step-00000050); go on from them with --resume ck, or remove them, or use another --ckpt-dir"
    run -1 --separate-stderr sgd-train -q -m spec.yaml --ckpt-dir other --ckpt-local ck <train.csv
    assert_regex "$stderr" '^sgd-train: --ckpt-local ck: holds the checkpoints of a training already \(the newest: step-00000050\)'
    assert_equal "$(find ck -printf '%P %y %s %T@ %l\n' | sort)" "$before"
    # links and leftovers are not checkpoints: such a root is taken
    mkdir ck2
    ln -s "$PWD/ck/step-00000050" ck2/step-00000050
    mkdir ck2/.tmp-step-00000010
    run -0 sgd-train -q -m spec.yaml --ckpt-dir ck2 <train.csv
    assert_output ck2/step-00000150
}

@test "a resumed training replaces no checkpoint: one with its bytes is published, another fails" {
    stepwise 5 --ckpt-dir ck
    cp -a ck/step-00000050 saved50
    # killed after step-00000050 was renamed into place, before latest
    # followed: a replay of the same input reaches it with the same bytes
    ln -sfn step-00000030 ck/latest
    run -0 --separate-stderr sgd-train -q --resume ck --ckpt-dir ck --skip-seen < <(head -n 200 train.csv)
    assert_output ck/step-00000050
    assert_equal "$(readlink ck/latest)" step-00000050
    run -0 ls -A ck
    assert_output "$(printf 'latest\n'; for i in 10 20 30 40 50; do printf 'step-%08d\n' "$i"; done)"
    run -0 diff -r saved50 ck/step-00000050
    # other records from step 30: step 50 would hold another state
    run -1 --separate-stderr sgd-train -q --resume ck/step-00000030 --ckpt-dir ck < <(tail -n 80 train.csv)
    assert_output ""
    assert_equal "${stderr_lines[0]}" "sgd-train: checkpoint step-00000050 failed: ck/step-00000050 exists and holds another training's state; not replacing it"
    assert_regex "$stderr" $'\nsgd-train: the final checkpoint could not be written$'
    run -0 diff -r saved50 ck/step-00000050
    assert_equal "$(readlink ck/latest)" step-00000050
    # a link in its place, to the same bytes: not a checkpoint directory
    mv ck/step-00000050 outside50
    ln -s "$PWD/outside50" ck/step-00000050
    run -1 --separate-stderr sgd-train -q --resume ck/step-00000030 --ckpt-dir ck --skip-seen < <(head -n 200 train.csv)
    assert_regex "$stderr" "^sgd-train: checkpoint step-00000050 failed: ck/step-00000050 exists and is not a checkpoint directory; not replacing it"
    [[ -L ck/step-00000050 ]] || fail "the link was replaced"
    run -0 diff -r saved50 outside50
    run -0 ls -A ck
    assert_output "$(printf 'latest\n'; for i in 10 20 30 40 50; do printf 'step-%08d\n' "$i"; done)"
}

@test "retention and clean-up never follow a link out of the checkpoint root" {
    mkdir -p outside/sub
    echo precious >outside/file
    echo precious >outside/sub/file
    mkdir ck
    # a link named like a checkpoint, and leftovers that are links
    ln -s "$PWD/outside" ck/step-00000001
    ln -s "$PWD/outside" ck/.tmp-step-00000020
    ln -s "$PWD/outside" ck/.tmp-del-step-00000010
    # a leftover directory that holds a link out
    mkdir ck/.tmp-step-00000030
    ln -s "$PWD/outside/file" ck/.tmp-step-00000030/model.safetensors
    ln -s "$PWD/outside" ck/.tmp-step-00000030/sub
    stepwise 15 --ckpt-dir ck --keep 1
    run -0 find outside -type f
    assert_output $'outside/file\noutside/sub/file'
    assert_equal "$(cat outside/file outside/sub/file)" $'precious\nprecious'
    # the link is neither a checkpoint counted by --keep nor removed by it
    [[ -L ck/step-00000001 ]] || fail "ck/step-00000001 was removed"
    run -0 ls -A ck
    assert_output $'latest\nstep-00000001\nstep-00000150'
}

@test "--out and --ckpt-dir together write both" {
    run -0 --separate-stderr sgd-train -q -m spec.yaml --ckpt-dir ck -o final <train.csv
    assert_equal "${lines[*]}" "ck/step-00000150 final"
    run -0 cmp ck/step-00000150/model.safetensors final/model.safetensors
}

@test "leftover .tmp- directories are removed at start and never taken for checkpoints" {
    mkdir -p ck/.tmp-step-00000999 ck/.tmp-step-00000007
    echo junk >ck/.tmp-step-00000999/manifest.yaml
    ln -s nowhere ck/.tmp-latest.123
    run -0 sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-every 1000 <train.csv
    assert_output ck/step-00000150
    run -0 ls -A ck
    assert_output $'latest\nstep-00000150'
}

@test "resume is bit-exact for several k, SGD with momentum" {
    for k in 1 37 75 149; do straight_and_split "$k"; done
}

@test "resume is bit-exact for several k, Adam, running normalization, weight averaging" {
    mk_spec spec.yaml 'normalize: running'
    sed -i 's/^optimizer: .*/optimizer: {type: adam, lr: 0.01, average: 0.9}/' spec.yaml
    for k in 1 50 149; do straight_and_split "$k"; done
}

@test "SIGTERM, resume, go on: the weights equal those of a run that never stopped" {
    for opt in sgd adam; do
        sgd-train -q -m spec.yaml --optimizer "$opt" -o straight <train.csv >/dev/null
        mkfifo in
        sgd-train -q -m spec.yaml --optimizer "$opt" --ckpt-dir ck <in >paths 2>err &
        local pid=$! rc=0
        exec 7>in
        head -n 301 train.csv >&7
        # the handler is set; then the signal comes at whatever step the
        # training has reached (all 300 records on an idle machine)
        wait_caught "$pid" 15 || { kill -9 "$pid"; fail "no SIGTERM handler"; }
        kill -TERM "$pid"
        wait_gone "$pid" || { kill -9 "$pid"; fail "still running after SIGTERM"; }
        wait "$pid" || rc=$?
        exec 7>&-
        assert_equal "$rc" 3 # stopped before the end of its input
        # one checkpoint, the signal's, of every step completed
        local seen
        seen=$(field ck/latest/state.yaml records_seen)
        ((seen % 4 == 0 && seen <= 300)) || fail "records_seen $seen"
        run -0 cat paths
        assert_output "$(printf 'ck/step-%08d' $((seen / 4)))"
        run -0 sgd-train -q --resume ck --skip-seen -o resumed <train.csv
        run -0 cmp straight/model.safetensors resumed/model.safetensors
        rm -rf straight ck resumed in paths
    done
}

@test "SIGUSR1 takes a checkpoint now, even while waiting for input, and training goes on" {
    mkfifo in
    sgd-train -m spec.yaml --ckpt-dir ck <in >paths 2>err &
    local pid=$! rc=0
    exec 7>in
    head -n 128 train.csv >&7
    # the progress table's row for 128 records: all learned, and the signal
    # handlers (set before the table's header) are in place
    wait_for_match err '^ +128 ' 600 || { kill -9 "$pid"; fail "no progress: $(cat err)"; }
    kill -USR1 "$pid"
    wait_for_match paths 'step-00000032' 600 || { kill -9 "$pid"; fail "no checkpoint on SIGUSR1"; }
    tail -n +129 train.csv >&7
    exec 7>&-
    wait "$pid" || rc=$?
    assert_equal "$rc" 0
    run -0 cat paths
    assert_output $'ck/step-00000032\nck/step-00000150'
}

@test "--ckpt-local: written to the fast level first, copied to --ckpt-dir" {
    run -0 sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-local fast --ckpt-every 50 <train.csv
    in_order ck/step-00000050 ck/step-00000100 ck/step-00000150
    local p
    for p in "${lines[@]}"; do
        run -0 diff -r "fast/${p#ck/}" "$p"
    done
    assert_equal "$(readlink fast/latest)" step-00000150
    assert_equal "$(readlink ck/latest)" step-00000150
}

@test "--ckpt-interval takes checkpoints by the clock" {
    # 2 records per second for 3 s: at least one timed checkpoint before the end
    (for i in $(seq 1 12); do sed -n "$((i * 4 - 3)),$((i * 4))p" train.csv; sleep 0.25; done) |
        sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-interval 1 >paths
    run -0 wc -l <paths
    assert [ "$output" -ge 2 ]
    run -0 tail -n 1 paths
    assert_output ck/step-00000012
}

@test "a checkpoint that cannot be persisted is a clear error; the final one fails the run" {
    mkdir ro && chmod 555 ro
    # as an unprivileged user: root ignores the permissions
    run -1 --separate-stderr unprivileged sgd-train -q -m spec.yaml --ckpt-dir ro/ck <train.csv
    assert_regex "$stderr" '^sgd-train: ro/ck: Permission denied$'
    mkdir -p rw/ck && chmod 777 rw/ck
    run -0 unprivileged sgd-train -q -m spec.yaml --ckpt-dir rw/ck --ckpt-every 50 <train.csv
    chmod 555 rw/ck
    run -1 --separate-stderr unprivileged sgd-train -q --resume rw/ck --ckpt-dir rw/ck <train.csv
    assert_regex "$stderr" 'checkpoint step-00000300 failed: rw/ck/\.tmp-step-00000300: Permission denied'
    assert_regex "$stderr" 'the final checkpoint could not be written'
}

@test "a training that diverges: exit 1 naming the step, its last good checkpoint kept, no model published" {
    sed 's/lr: 0.1,/lr: 1e30,/' spec.yaml >wild.yaml
    run -1 --separate-stderr sgd-train -q -m wild.yaml --ckpt-dir ck --ckpt-every 1 -o out <train.csv
    local last=${stderr##*$'\n'}
    assert_regex "$last" '^sgd-train: training diverged at step [0-9]+ \([0-9]+ records\): the loss is not finite; no model written; the last good checkpoint is ck/step-[0-9]{8}$'
    [[ ! -e out ]] || fail "a model was published"
    assert_equal "ck/$(readlink ck/latest)" "${last##* }"
    # every checkpoint printed verifies and holds finite values: none other
    # was written
    local p
    ((${#lines[@]} >= 1)) || fail "no checkpoint before the divergence"
    for p in "${lines[@]}"; do ckpt_verify "$p" || fail "$p does not verify"; done
    run -0 ls -A ck
    refute_output --partial .tmp-
    run -0 infer -m ck <test.csv
    assert_equal "${#lines[@]}" 150
}

@test "--resume from an archive-less corrupt checkpoint: exit 1, nothing written" {
    train_ckpt ck
    printf 'x' | dd of=ck/optimizer.safetensors bs=1 seek=200 conv=notrunc 2>/dev/null
    run -1 sgd-train -q --resume ck -o out <train.csv
    assert_output --partial "optimizer.safetensors"
    [[ ! -e out ]]
}

@test "usage errors: -m with --resume, --skip-seen alone, --ckpt-every alone, --optimizer on resume" {
    train_ckpt ck
    run -2 sgd-train -m spec.yaml --resume ck <train.csv
    run -2 sgd-train -m spec.yaml --skip-seen <train.csv
    run -2 sgd-train -m spec.yaml --ckpt-every 5 <train.csv
    run -2 sgd-train --resume ck --optimizer adam <train.csv
    run -2 sgd-train -m spec.yaml --ckpt-dir ck2 --ckpt-interval 0 <train.csv
    # stdin is the records, not the checkpoint
    run -2 --separate-stderr sgd-train --resume - <train.csv
    assert_regex "$stderr" 'stdin carries the records'
}

@test "kill -9 at 50 moments, each relative to the k-th checkpoint printed: all verify, latest resumes bit-exactly" {
    mk_data 4000 3 >long.csv
    { cat long.csv; mk_data 40 5; } >longer.csv
    sgd-train -q -m spec.yaml -o straight <longer.csv >/dev/null
    local i j k pid line last d step
    RANDOM=42
    for i in $(seq 1 50); do
        rm -rf ck resumed in.fifo out.fifo
        mkfifo in.fifo out.fifo
        sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-every 3 --keep 3 <in.fifo >out.fifo 2>/dev/null &
        pid=$!
        exec 7>in.fifo 8<out.fifo
        # 12 records (3 steps, one checkpoint) at a time, the next once the
        # checkpoint of the one before is printed; after the k-th (k = 0: at
        # once) one chunk more, and the kill while it is learned and written
        k=$((RANDOM % 21)) last=
        for ((j = 0; j <= k; j++)); do
            sed -n "$((j * 12 + 1)),$((j * 12 + 12))p" long.csv >&7
            ((j < k)) || break
            read -r -t 120 line <&8 || { kill -9 "$pid"; fail "iteration $i: no checkpoint for chunk $j"; }
            last=$line
        done
        sleep "0.00$((RANDOM % 10))"
        kill -9 "$pid"
        wait "$pid" 2>/dev/null || true
        exec 7>&- 8<&-
        # never a half-written checkpoint under a final name
        for d in ck/step-*; do
            [[ -e $d ]] || continue
            ckpt_verify "$d" || fail "iteration $i: $d does not verify"
        done
        [[ -n $last ]] || continue
        # latest is there, at the k-th checkpoint or a later one
        [[ -L ck/latest ]] || fail "iteration $i: no ck/latest after $k checkpoints"
        step=$(field ck/latest/state.yaml step)
        ((10#$step >= 10#${last#ck/step-})) || fail "iteration $i: latest at step $step, before $last"
        # and it goes on to the bytes of a training that never stopped
        sgd-train -q --resume ck --skip-seen -o resumed <longer.csv >/dev/null ||
            fail "iteration $i: the resume failed"
        cmp -s straight/model.safetensors resumed/model.safetensors ||
            fail "iteration $i: resumed from step $step, not the weights of a run that never stopped"
    done
}
