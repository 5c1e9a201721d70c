#!/usr/bin/env bats
# 110-fuzz.bats - the libFuzzer harnesses of t/fuzz (one per reader; see
# t/fuzz/README): make check builds them; each runs every input saved under
# t/fuzz/regress/NAME/ without a crash, then fuzzes for FUZZ_SMOKE_SECONDS
# (default 3) on its seeds without finding a crash, a leak or an input
# slower than 1 s.  Fails, never skips, when clang or libFuzzer is missing
# or a harness did not build: a harness that stops building is noticed.

load helpers

: "${MNN_FUZZ:=$MNN_BIN/../t/fuzz}"

# why a harness is missing: the end of make check's build log
build_log() {
    if [[ -f $MNN_FUZZ/build.log ]]; then
        echo "the end of $MNN_FUZZ/build.log:"
        tail -n 15 "$MNN_FUZZ/build.log"
    else
        echo "no $MNN_FUZZ/build.log: run make check (or make fuzz-build)"
    fi
}

# fuzz_smoke NAME: the regression inputs, then a short run on the seeds
fuzz_smoke() {
    local name=$1 h=$MNN_FUZZ/fuzz-$1
    [[ -x $h ]] || fail "$h is not built; $(build_log)"
    [[ -d $MNN_FUZZ/gen-seeds/$name ]] ||
        fail "no seeds in $MNN_FUZZ/gen-seeds/$name (t/fuzz/mkseeds); $(build_log)"
    cd "$BATS_TEST_TMPDIR" || return 1
    local -a regress=() seeds=("$MNN_FUZZ/gen-seeds/$name") dict=()
    if [[ -d $MNN_SRC/t/fuzz/regress/$name ]]; then
        mapfile -t regress < <(find "$MNN_SRC/t/fuzz/regress/$name" -type f | sort)
    fi
    if ((${#regress[@]})); then
        run "$h" -timeout=1 -rss_limit_mb=2048 "${regress[@]}"
        ((status == 0)) ||
            fail "a regression input of $name fails (exit $status): ${output: -4000}"
    fi
    [[ -d $MNN_SRC/t/fuzz/seeds/$name ]] && seeds+=("$MNN_SRC/t/fuzz/seeds/$name")
    [[ -f $MNN_SRC/t/fuzz/dict/$name.dict ]] && dict=("-dict=$MNN_SRC/t/fuzz/dict/$name.dict")
    mkdir corpus found
    run "$h" -max_total_time="${FUZZ_SMOKE_SECONDS:-3}" -timeout=1 -rss_limit_mb=2048 \
        -artifact_prefix="$BATS_TEST_TMPDIR/found/" "${dict[@]}" corpus "${seeds[@]}"
    local log=$output
    ((status == 0)) || fail "fuzz-$name found something (exit $status): ${log: -4000}"
    # the seeds were read and the run came to its end
    [[ $log =~ INITED\ +cov:\ [0-9]+ && $log =~ DONE\ +cov:\ [0-9]+ ]] ||
        fail "fuzz-$name did not run to its end: ${log: -2000}"
    run -0 find found -type f
    assert_output "" # no crash-*, leak-*, timeout-* or oom-* input
}

@test "clang and libFuzzer are installed (Debian packages clang, libclang-rt-14-dev)" {
    need clang clang
    local rt
    rt=$(clang --print-runtime-dir) || fail "clang --print-runtime-dir failed"
    compgen -G "$rt/libclang_rt.fuzzer-*.a" >/dev/null ||
        fail "no libFuzzer runtime in $rt: install the Debian package libclang-rt-14-dev"
}

@test "fuzz-records: the record parser, dense and libsvm, and the line reader" {
    fuzz_smoke records
}

@test "fuzz-spec: the model spec" {
    fuzz_smoke spec
}

@test "fuzz-manifest: manifest.yaml" {
    fuzz_smoke manifest
}

@test "fuzz-state: state.yaml" {
    fuzz_smoke state
}

@test "fuzz-safetensors: safetensors files" {
    fuzz_smoke safetensors
}

@test "fuzz-archive: checkpoint archives" {
    fuzz_smoke archive
}

@test "fuzz-replay: replay-buffer's state file" {
    fuzz_smoke replay
}

@test "fuzz-ship: ckpt-ship --receive" {
    fuzz_smoke ship
}
