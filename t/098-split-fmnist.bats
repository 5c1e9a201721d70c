#!/usr/bin/env bats
# 098-split-fmnist: the forgetting experiment of share/mini-nn/examples/
# split-fmnist on the real Fashion-MNIST (Debian's dataset-fashion-mnist):
# without replay the model knows only the last task; with replay-buffer
# (class-balanced, capacity 2000, ratio 1) it keeps most of the others.

load helpers
bats_require_minimum_version 1.5.0

@test "split Fashion-MNIST: ACC about 0.2 without replay, >= 0.75 with replay-buffer" {
    # no skip: a test skipped on a fresh machine is a promise nobody checks
    local dir=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist} f
    for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
        t10k-labels-idx1-ubyte.gz; do
        [[ -r $dir/$f ]] ||
            fail "$dir/$f is missing (Debian package dataset-fashion-mnist; ./quickstart check installs it)"
    done
    run -0 --separate-stderr "$MNN_SRC/share/mini-nn/examples/split-fmnist" "$MNN_BIN"
    assert_equal "$stderr" ""
    local none with
    none=$(sed -n 's/^no-replay: ACC \([0-9.]*\) .*/\1/p' <<<"$output")
    with=$(sed -n 's/^replay: ACC \([0-9.]*\) .*/\1/p' <<<"$output")
    [[ -n $none && -n $with ]] || fail "no ACC lines in: $output"
    # 5 rows of 5 accuracies per run
    assert_equal "$(grep -c '^  after task [1-5]: [0-9.]* [0-9.]* [0-9.]* [0-9.]* [0-9.]*$' <<<"$output")" 10
    awk -v a="$none" 'BEGIN { exit !(a >= 0.15 && a <= 0.25) }' ||
        fail "ACC without replay $none, expected about 0.2 (the last task only)"
    awk -v a="$with" 'BEGIN { exit !(a >= 0.75) }' || fail "ACC with replay $with < 0.75"
    assert_regex "$output" 'no-replay: ACC [0-9.]+  BWT -0\.9[0-9]+  forgetting 0\.9[0-9]+'
}
