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
    infer -m "$1" </dev/null
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
    # slow input: the writer keeps up, nothing is skipped
    (for i in 1 2 3; do sed -n "$((i * 40 - 39)),$((i * 40))p" train.csv; sleep 0.3; done) |
        sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-every 10 >paths
    run -0 cat paths
    assert_output $'ck/step-00000010\nck/step-00000020\nck/step-00000030'
    run -0 grep -x 'parent: "step-00000020"' ck/step-00000030/manifest.yaml
    run -0 grep -x 'parent: "step-00000010"' ck/step-00000020/manifest.yaml
}

@test "--keep N keeps the newest N and never the one latest names goes" {
    run -0 sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-every 10 --keep 2 <train.csv
    run -0 ls ck
    assert_line latest
    assert_line step-00000150
    assert [ "$(ls -d ck/step-* | wc -l)" -le 2 ]
    run -0 ls -A ck
    refute_output --partial .tmp-
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
        wait_for_match paths . 1 || true # nothing yet: no checkpoint before the signal
        sleep 0.3
        kill -TERM "$pid"
        wait_gone "$pid" || { kill -9 "$pid"; fail "still running after SIGTERM"; }
        wait "$pid" || rc=$?
        exec 7>&-
        assert_equal "$rc" 0
        run -0 cat paths
        assert_output "ck/step-00000075"
        assert_equal "$(field ck/latest/state.yaml records_seen)" 300
        run -0 sgd-train -q --resume ck --skip-seen -o resumed <train.csv
        run -0 cmp straight/model.safetensors resumed/model.safetensors
        rm -rf straight ck resumed in paths
    done
}

@test "SIGUSR1 takes a checkpoint now, even while waiting for input, and training goes on" {
    mkfifo in
    sgd-train -q -m spec.yaml --ckpt-dir ck <in >paths 2>err &
    local pid=$! rc=0
    exec 7>in
    head -n 100 train.csv >&7
    sleep 0.5
    kill -USR1 "$pid"
    wait_for_match paths 'step-00000025' || { kill -9 "$pid"; fail "no checkpoint on SIGUSR1"; }
    tail -n +101 train.csv >&7
    exec 7>&-
    wait "$pid" || rc=$?
    assert_equal "$rc" 0
    run -0 cat paths
    assert_output $'ck/step-00000025\nck/step-00000150'
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
    if touch ro/x 2>/dev/null; then skip "running as root: permissions are not enforced"; fi
    run -1 sgd-train -q -m spec.yaml --ckpt-dir ro/ck <train.csv
    assert_output --partial "ro/ck"
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
}

@test "kill -9 at 50 random moments around checkpoints: latest always verifies and resumes" {
    mk_data 40000 3 >long.csv # about 0.15 s of training with checkpoints
    { cat long.csv; mk_data 40 5; } >longer.csv
    local i ok=0 seen=0
    RANDOM=42
    for i in $(seq 1 50); do
        sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-every 3 --keep 3 <long.csv >/dev/null 2>&1 &
        local pid=$!
        sleep "0.0$((RANDOM % 10))$((RANDOM % 10))"
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        if [[ -L ck/latest ]]; then
            seen=$((seen + 1))
            run -0 ckpt_verify ck
            run -0 sgd-train -q --resume ck --skip-seen -o "resumed" <longer.csv
            rm -rf resumed
        fi
        # never a half-written checkpoint under a final name
        for d in ck/step-*; do
            [[ -e $d ]] || continue
            run -0 ckpt_verify "$d"
        done
        ok=$((ok + 1))
    done
    assert_equal "$ok" 50
    assert [ "$seen" -ge 25 ]
}
