#!/usr/bin/env bats
# 145-federated-examples: share/mini-nn/examples/federated-fmnist and
# tier-finetune on the real Fashion-MNIST (Debian's dataset-fashion-mnist),
# in their quick form (LIMIT: the first training records only, two
# rounds), the federated one shipping through the private sshd: the tables,
# the figures a bad node and the fine-tuning must show, the plots.  The
# full runs' figures are in the examples' closing notes (README).

load helpers
bats_require_minimum_version 1.5.0

setup_file() {
    local dir=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist} f
    for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
        t10k-labels-idx1-ubyte.gz; do
        # no skip: a test skipped on a fresh machine is a promise nobody checks
        [[ -r $dir/$f ]] || {
            echo "$dir/$f is missing (Debian package dataset-fashion-mnist; ./quickstart check installs it)" >&2
            return 1
        }
    done
}

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
}

# png FILE: FILE is a PNG image
png() {
    [[ $(head -c 8 "$1" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]
}

@test "federated-fmnist: rounds through ckpt-ship over ssh; a bad node breaks fedavg, not median or trimmed-mean" {
    export LIMIT=3000 ROUNDS=2 SHIP=ssh PLOT=$PWD/fed.png
    run -0 --separate-stderr "$MNN_SRC/share/mini-nn/examples/federated-fmnist" "$MNN_BIN"
    assert_equal "$stderr" ""
    assert_line --index 2 --regexp '^round +central +iid +iid-fedavgm +dirichlet +dirichlet-prox +bad-fedavg +bad-median +bad-trimmed$'
    assert_equal "$(grep -cE '^[12] +(0\.[0-9]{4} +){7}0\.[0-9]{4}$' <<<"$output")" 2
    local last
    last=$(grep -E '^2 ' <<<"$output")
    # columns: round central iid iid-fedavgm dirichlet dirichlet-prox
    # bad-fedavg bad-median bad-trimmed
    awk '{ exit !($2 > 0.6 && $3 > 0.5 && $4 > 0.5 && $7 < 0.4 && $8 > $7 + 0.2 &&
                  $9 > $7 + 0.2 && $8 > $3 - 0.05 && $9 > $3 - 0.05) }' <<<"$last" ||
        fail "unexpected accuracies: $last"
    assert_line --regexp '^after round 2: central 0\.[0-9]{4}$'
    assert_line --regexp '^  iid +0\.[0-9]{4} \([-+][0-9.]+ points from central\)$'
    assert_line --regexp '^  bad-median +0\.[0-9]{4} \([-+][0-9.]+ points from central, [-+][0-9.]+ from iid\)$'
    png fed.png
}

@test "federated-fmnist: the same seed, the same table (the shards, the shuffles, the bad node's garbage)" {
    export LIMIT=1000 ROUNDS=1 NODES=3 PLOT=$PWD/a.png FEDERATIONS="bad iid 1 - --mode=fedavg
d dirichlet 0 --prox=0.01 --server-lr=2,--server-momentum=0.5"
    run -0 "$MNN_SRC/share/mini-nn/examples/federated-fmnist" "$MNN_BIN"
    local first=$output
    PLOT=$PWD/b.png run -0 "$MNN_SRC/share/mini-nn/examples/federated-fmnist" "$MNN_BIN"
    assert_equal "${output//b.png/a.png}" "$first"
    SEED=2 PLOT=$PWD/a.png run -0 "$MNN_SRC/share/mini-nn/examples/federated-fmnist" "$MNN_BIN"
    [[ $output != "$first" ]]
}

@test "federated-fmnist: bad settings are refused before any work" {
    run -1 env ROUNDS=x "$MNN_SRC/share/mini-nn/examples/federated-fmnist" "$MNN_BIN"
    assert_output --partial 'whole numbers'
    run -1 env SHIP=ftp "$MNN_SRC/share/mini-nn/examples/federated-fmnist" "$MNN_BIN"
    assert_output --partial 'SHIP=ftp: local or ssh'
    run -1 env NODES=1 "$MNN_SRC/share/mini-nn/examples/federated-fmnist" "$MNN_BIN"
    assert_output --partial 'NODES >= 2'
}

@test "tier-finetune: the big tier fine-tuned on the traffic it was forwarded, the cascade evaluated again" {
    export LIMIT=6000 PLOT=$PWD/tier.png
    run -0 --separate-stderr "$MNN_SRC/share/mini-nn/examples/tier-finetune" "$MNN_BIN"
    assert_equal "$stderr" ""
    assert_regex "$output" 'traffic: [0-9]+ of 5000 training records forwarded'
    local n
    n=$(sed -n 's/^traffic: \([0-9]*\) of.*/\1/p' <<<"$output")
    # about the fraction asked (0.3, chosen on the held-out records)
    (( n > 1000 && n < 2000 )) || fail "$n records forwarded"
    assert_equal "$(grep -cE '^(big|control|tuned) +0\.[0-9]{4} +0\.[0-9]{4}$' <<<"$output")" 3
    assert_regex "$output" 'cascade: [-+][0-9.]+ points fine-tuned on its traffic \([-+][0-9.]+ for the control\)'
    png tier.png
}
