#!/usr/bin/env bats
# 001-cli: command-line conventions shared by every program: --help,
# --version, usage errors (exit 2 with a hint to --help).

bats_require_minimum_version 1.5.0
load helpers

setup() {
    fixtures
    train_ckpt ck
}

PROGS=(sgd-train infer)

# model_arg PROG: the -m argument each program needs to get past "missing -m"
model_arg() {
    case $1 in
    sgd-train) echo spec.yaml ;;
    infer) echo ck ;;
    esac
}

@test "--help: usage on stdout, nothing on stderr, exit 0" {
    for p in "${PROGS[@]}"; do
        run -0 --separate-stderr "$p" --help
        assert_line --index 0 --regexp "^Usage: $p -m "
        assert_output --partial -- "--help"
        assert_output --partial -- "--version"
        assert_equal "$stderr" ""
        # -h is the same
        local long=$output
        run -0 --separate-stderr "$p" -h
        assert_equal "$output" "$long"
    done
}

@test "--help mentions the exit status convention" {
    for p in "${PROGS[@]}"; do
        run -0 "$p" --help
        assert_output --partial "Exit status: 0 success, 1 data or runtime error, 2 usage error"
    done
}

@test "--version: 'prog (mini-nn) 0.1.0' on stdout" {
    for p in "${PROGS[@]}"; do
        run -0 --separate-stderr "$p" --version
        assert_output "$p (mini-nn) 0.1.0"
        assert_equal "$stderr" ""
        run -0 --separate-stderr "$p" -V
        assert_output "$p (mini-nn) 0.1.0"
    done
}

@test "--version and --help do not need -m and ignore stdin" {
    for p in "${PROGS[@]}"; do
        run -0 "$p" --version </dev/null
        run -0 "$p" --help </dev/full
    done
}

@test "unknown option: exit 2, hint to --help on stderr, stdout empty" {
    for p in "${PROGS[@]}"; do
        run -2 --separate-stderr "$p" -m "$(model_arg "$p")" --no-such-option <train.csv
        assert_equal "$output" ""
        # getopt names the option (prefixed with argv[0], which under
        # libtool is the .libs path); the program adds its own 'prog:' line
        assert_regex "$stderr" "no-such-option"
        grep -q "^$p: " <<<"$stderr" || fail "no '$p: ' line in: $stderr"
        assert_regex "$stderr" "Try '$p --help' for more information"
        run -2 --separate-stderr "$p" -Z <train.csv
        assert_regex "$stderr" "Try '$p --help'"
    done
}

@test "unexpected operand: exit 2 (records come from stdin)" {
    for p in "${PROGS[@]}"; do
        run -2 --separate-stderr "$p" -m "$(model_arg "$p")" train.csv </dev/null
        assert_regex "$stderr" "^$p: .*train.csv"
        assert_equal "$output" ""
    done
}

@test "missing -m: exit 2 naming -m" {
    for p in "${PROGS[@]}"; do
        run -2 --separate-stderr "$p" <train.csv
        assert_regex "$stderr" "^$p: .*-m"
        assert_regex "$stderr" "Try '$p --help'"
        assert_equal "$output" ""
    done
}

@test "option missing its argument: exit 2" {
    for p in "${PROGS[@]}"; do
        run -2 --separate-stderr "$p" -m
        assert_regex "$stderr" "Try '$p --help'"
        run -2 --separate-stderr "$p" -m "$(model_arg "$p")" --batch </dev/null
        assert_regex "$stderr" "Try '$p --help'"
    done
}

@test "--batch 0 / -1 / 1x / empty: exit 2 naming --batch" {
    for p in "${PROGS[@]}"; do
        for v in 0 -1 1x '' 99999999999999999999999; do
            run -2 --separate-stderr "$p" -m "$(model_arg "$p")" --batch "$v" <train.csv
            assert_regex "$stderr" "^$p: --batch"
            assert_equal "$output" ""
        done
    done
}

@test "--on-error=maybe: exit 2 naming the valid modes" {
    for p in "${PROGS[@]}"; do
        run -2 --separate-stderr "$p" -m "$(model_arg "$p")" --on-error=maybe <train.csv
        assert_regex "$stderr" "^$p: --on-error: 'maybe'"
        assert_regex "$stderr" "fail, skip"
        assert_equal "$output" ""
    done
}

@test "--threads 0 and --threads x: exit 2" {
    for p in "${PROGS[@]}"; do
        run -2 --separate-stderr "$p" -m "$(model_arg "$p")" --threads 0 <train.csv
        assert_regex "$stderr" "^$p: --threads"
        run -2 --separate-stderr "$p" -m "$(model_arg "$p")" --threads x <train.csv
        assert_regex "$stderr" "^$p: --threads"
    done
}

@test "sgd-train: bad numeric option values are usage errors, nothing written" {
    for o in "--lr abc" "--lr nan" "--lr inf" "--lr 1e999" "--lr 0" "--lr -0.1" \
        "--momentum 1" "--momentum x" "--weight-decay -1" "--lr-decay -1" \
        "--seed -1" "--seed 1.5" "--optimizer rmsprop"; do
        # shellcheck disable=SC2086
        run -2 --separate-stderr sgd-train -m spec.yaml -o out $o <train.csv
        assert_regex "$stderr" "^sgd-train: "
        assert_equal "$output" ""
        [[ ! -e out ]] || fail "sgd-train $o left a checkpoint behind"
    done
}

@test "sgd-train: --lr abc message names the option and the value" {
    run -2 --separate-stderr sgd-train -m spec.yaml -o out --lr abc <train.csv
    assert_regex "$stderr" "^sgd-train: --lr: 'abc' is not a finite number"
    assert_regex "$stderr" "Try 'sgd-train --help'"
}

@test "sgd-train: empty --out is a usage error" {
    run -2 --separate-stderr sgd-train -m spec.yaml -o '' <train.csv
    assert_regex "$stderr" "^sgd-train: --out"
}

@test "infer: --eval with --no-label is a usage error" {
    run -2 --separate-stderr infer -m ck --eval --no-label <train.csv
    assert_regex "$stderr" "^infer: .*--eval.*--no-label"
    assert_equal "$output" ""
}

@test "infer: more than 16 -m options are a usage error" {
    run -2 --separate-stderr infer $(printf -- '-m ck %.0s' {1..17}) <train.csv
    assert_regex "$stderr" "^infer: -m: at most 16 models"
}

@test "every program: --help, --version, unknown option, exit status convention" {
    for p in sgd-train infer ckpt-pack ckpt-resume; do
        run -0 --separate-stderr "$p" --help
        assert_line --index 0 --regexp "^Usage: $p "
        assert_output --partial "Exit status"
        assert_equal "$stderr" ""
        run -0 --separate-stderr "$p" --version
        assert_output "$p (mini-nn) 0.1.0"
        run -2 --separate-stderr "$p" --no-such-option </dev/null
        assert_equal "$output" ""
        assert_regex "$stderr" "Try '$p --help'"
    done
}

@test "libmini-nn exports exactly the MNN_API functions of mini-nn.h" {
    local so
    so=$(ls "$MNN_BIN"/../lib/.libs/libmini-nn.so.* 2>/dev/null | head -n 1)
    [[ -n $so ]] || fail "no shared libmini-nn under $MNN_BIN/../lib/.libs"
    command -v nm >/dev/null || fail "nm is not installed (Debian package binutils)"
    nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRVW]$/ { print $3 }' | sort >exported.txt
    sed -n 's/^MNN_API [^(]*[ *]\(mnn_[a-z0-9_]*\) *(.*/\1/p' "$MNN_SRC/lib/mini-nn.h" | sort >declared.txt
    [[ $(wc -l <declared.txt) -gt 100 ]] || fail "only $(wc -l <declared.txt) MNN_API declarations found"
    run -0 diff declared.txt exported.txt
    # internal helpers and libyaml's types stay inside
    run -1 grep -E '^(mnn_yaml_|mnn_fail|mnn_spec_from_node|yaml_)' exported.txt
}

@test "option numbers: hex, inf, nan, spaces and trailing junk are usage errors in every program" {
    local bad
    cd "$BATS_TEST_TMPDIR"
    mk_spec spec.yaml
    for bad in 0x1p-3 inf nan " 0.5" "0.5 " 0.5x 1,5; do
        run -2 --separate-stderr sgd-train -m spec.yaml --lr "$bad"
        assert_regex "$stderr" "--lr: '$bad'"
        run -2 --separate-stderr stream-sample -p "$bad"
        assert_regex "$stderr" "-p: '$bad'"
        run -2 --separate-stderr stream-sample -k 3 --decay "$bad"
        assert_regex "$stderr" "--decay: '$bad'"
        run -2 --separate-stderr replay-buffer --ratio "$bad"
        assert_regex "$stderr" "--ratio: '$bad'"
        run -2 --separate-stderr ckpt-ship --bwlimit "$bad" a b
        assert_regex "$stderr" "--bwlimit: '$bad'"
        run -2 --separate-stderr ckpt-merge --mode trimmed-mean --trim "$bad" -o out a
        assert_regex "$stderr" "--trim: '$bad'"
    done
    # and what they are meant to take
    run -0 stream-sample -p 1e-0 </dev/null
    run -0 replay-buffer --ratio .5 </dev/null
}
