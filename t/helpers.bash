# helpers.bash - shared setup and small deterministic fixtures for the bats
# tests.  Loaded by every t/NNN-*.bats with `load helpers`.
#
# Environment (set by `make check`, see Makefile.am):
#   MNN_BIN  absolute path of the built bin/ directory
#   MNN_SRC  absolute path of the source tree
#   MANDOC   path of mandoc, or 'no'

bats_load_library bats-support 2>/dev/null || load /usr/lib/bats/bats-support/load
bats_load_library bats-assert 2>/dev/null || load /usr/lib/bats/bats-assert/load

: "${MNN_SRC:=$(cd "$BATS_TEST_DIRNAME/.." && pwd)}"
if [[ -z ${MNN_BIN:-} ]]; then
    # run by hand from the source tree: look for an in-tree or build-tests build
    for d in "$MNN_SRC/bin" "$MNN_SRC/build-tests/bin" "$MNN_SRC/build/bin"; do
        if [[ -x $d/sgd-train ]]; then MNN_BIN=$d; break; fi
    done
fi
: "${MANDOC:=$(command -v mandoc || echo no)}"
export MNN_BIN MNN_SRC MANDOC
export PATH="$MNN_BIN:$PATH"
export OPENBLAS_NUM_THREADS=1 LC_ALL=C
unset SOURCE_DATE_EPOCH

# ---- fixtures ---------------------------------------------------------------

# mk_spec FILE [EXTRA-YAML-LINE]...
# The tiny classifier: 4 inputs, 3 classes, one hidden layer of 8 relu units,
# batch 4.  Extra lines are appended (e.g. 'normalize: running').
mk_spec() {
    local f=$1
    shift
    {
        printf '%s\n' \
            '# tiny test model' \
            'input: 4' \
            'classes: 3' \
            'layers:' \
            '  - {dense: 8, activation: relu}' \
            '  - {dense: 3}' \
            'optimizer: {type: sgd, lr: 0.1, momentum: 0.9}' \
            'batch: 4' \
            'seed: 1'
        local l
        for l in "$@"; do printf '%s\n' "$l"; done
    } >"$f"
}

# mk_reg_spec FILE: a regression model, 2 inputs, 1 output (mse).
mk_reg_spec() {
    printf '%s\n' \
        'input: 2' \
        'outputs: 1' \
        'loss: mse' \
        'layers:' \
        '  - {dense: 8, activation: tanh}' \
        '  - {dense: 1}' \
        'optimizer: {type: sgd, lr: 0.02, momentum: 0.5}' \
        'batch: 4' \
        'seed: 1' >"$1"
}

# mk_data N [SEED] [SEP] [AMP]: N dense records of the separable 3-class
# problem on stdout.  Record i has class i%3; feature j is +2 for j == class,
# -1 for the other class features, 0.5 for the 4th; plus uniform noise in
# [-AMP/2, AMP/2) (AMP 1 by default)
# from a Park-Miller generator (exact in double arithmetic, so every awk
# prints the same bytes).
mk_data() {
    awk -v n="$1" -v seed="${2:-7}" -v sep="${3:-,}" -v amp="${4:-1}" 'BEGIN {
        s = seed
        for (i = 0; i < n; i++) {
            k = i % 3
            line = k
            for (j = 0; j < 4; j++) {
                s = (s * 16807) % 2147483647
                u = (s / 2147483647 - 0.5) * amp
                c = (j == k) ? 2 : (j == 3 ? 0.5 : -1)
                line = line sep sprintf("%.4f", c + u)
            }
            print line
        }
    }'
}

# to_sparse: dense CSV records on stdin to libsvm on stdout (zeros dropped).
to_sparse() {
    awk -F, '{
        line = $1
        for (j = 2; j <= NF; j++)
            if ($j + 0 != 0)
                line = line " " (j - 1) ":" $j
        print line
    }'
}

# mk_reg_data N [SEED]: regression records y = 2*x1 - x2 + 0.5 on stdout.
mk_reg_data() {
    awk -v n="$1" -v seed="${2:-11}" 'BEGIN {
        s = seed
        for (i = 0; i < n; i++) {
            s = (s * 16807) % 2147483647; a = s / 2147483647 * 2 - 1
            s = (s * 16807) % 2147483647; b = s / 2147483647 * 2 - 1
            printf "%.6f,%.4f,%.4f\n", 2 * a - b + 0.5, a, b
        }
    }'
}

# fixtures: spec.yaml, train.csv (600 records), test.csv (150 other records)
# in $BATS_TEST_TMPDIR; cd there.
fixtures() {
    cd "$BATS_TEST_TMPDIR" || return 1
    mk_spec spec.yaml
    mk_data 600 7 >train.csv
    mk_data 150 12345 >test.csv
}

# train_ckpt [DIR] [OPTION]...: train the tiny model on train.csv into DIR
# (default ck), quietly; fails the test if sgd-train fails.
train_ckpt() {
    local dir=${1:-ck}
    shift || true
    sgd-train -q -m spec.yaml -o "$dir" "$@" <train.csv >/dev/null ||
        fail "sgd-train failed to make the fixture checkpoint $dir"
}

# stepwise N OPTION...: sgd-train -m spec.yaml OPTION... --ckpt-every 10 over
# the first N x 40 records of train.csv, fed 40 records (10 steps) at a time,
# each chunk only once the checkpoint of the one before is printed: no
# checkpoint is skipped for a busy writer, on an idle or a loaded machine.
# The paths printed go to the file paths.
stepwise() {
    local n=$1 pid i line
    shift
    rm -f in.fifo out.fifo paths
    mkfifo in.fifo out.fifo
    sgd-train -q -m spec.yaml --ckpt-every 10 "$@" <in.fifo >out.fifo &
    pid=$!
    exec 7>in.fifo 8<out.fifo
    for ((i = 1; i <= n; i++)); do
        sed -n "$((i * 40 - 39)),$((i * 40))p" train.csv >&7
        read -r -t 60 line <&8 || { kill -9 "$pid"; fail "no checkpoint after chunk $i"; }
        echo "$line" >>paths
    done
    exec 7>&-
    # nothing more to learn: the final checkpoint is the last chunk's
    while read -r -t 60 line <&8; do echo "$line" >>paths; done
    exec 8<&-
    wait "$pid" || fail "sgd-train failed"
    rm -f in.fifo out.fifo
}

# ---- small utilities ----------------------------------------------------------

# field FILE KEY: the value of a top-level 'KEY: value' line
field() {
    sed -n "s/^$2: //p" "$1"
}

# wait_for_match FILE REGEX [TENTHS]: wait until FILE has a line matching
# REGEX (default at most 10 s).
wait_for_match() {
    local f=$1 re=$2 n=${3:-100}
    while ((n-- > 0)); do
        grep -Eq -- "$re" "$f" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# open_writer FD FIFO PID [TENTHS]: open FIFO for writing on FD, and wait
# until process PID has it open (default: at most 30 s).  A plain
# `exec 5>FIFO` blocks until a reader comes, for ever if PID failed before it
# opened the FIFO; this one fails instead, once PID is gone or the time is
# up.  While it waits, a read-write descriptor of its own lets both opens
# (the test's and PID's) go through at once.
open_writer() {
    local fd=$1 fifo=$2 pid=$3 n=${4:-300} want l hold
    want=$(realpath -- "$fifo") || return 1
    exec {hold}<>"$fifo"
    eval "exec $fd>\"\$fifo\""
    while ((n-- > 0)); do
        for l in /proc/"$pid"/fd/*; do
            if [[ $(readlink -- "$l" 2>/dev/null) == "$want" ]]; then
                exec {hold}>&-
                return 0
            fi
        done
        [[ -d /proc/$pid/fd ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null ||
            break
        sleep 0.1
    done
    exec {hold}>&-
    eval "exec $fd>&-"
    return 1
}

# wait_caught PID SIGNUM [TENTHS]: wait until process PID catches signal
# SIGNUM (its bit in SigCgt of /proc/PID/status; default at most 30 s), so
# that the signal cannot kill it before its handler is set
wait_caught() {
    local n=${3:-300} mask
    while ((n-- > 0)); do
        mask=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null) || return 1
        [[ -n $mask ]] || return 1
        (((0x$mask >> ($2 - 1)) & 1)) && return 0
        sleep 0.1
    done
    return 1
}

# to_full CMD...: run CMD with stdout on /dev/full (for `run`, whose own
# stdout redirection would not reach the command)
to_full() {
    "$@" >/dev/full
}

# wait_gone PID [TENTHS]: wait until process PID has exited (default at
# most 10 s; a zombie not yet reaped has exited); returns 1 if it is still
# there.
wait_gone() {
    local n=${2:-100}
    while kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1") != Z* ]]; do
        ((n-- > 0)) || return 1
        sleep 0.1
    done
}

# bg_exit STATUS [TENTHS]: wait until the test's background process $BG_PID
# has exited (default at most 30 s), forget it, and check its exit status
bg_exit() {
    local rc=0
    wait_gone "$BG_PID" "${2:-300}" || fail "pid $BG_PID is still running"
    wait "$BG_PID" || rc=$?
    BG_PID=
    assert_equal "$rc" "$1"
}

# xxh3 FILE: the XXH3-64 of FILE in 16 hex digits, as the manifest writes it.
# Uses xxhsum -H3 when installed, else compiles a tiny helper against
# libxxhash (a build dependency of mini-nn).  Returns 1 when neither works.
xxh3() {
    local helper=$BATS_FILE_TMPDIR/xxh3
    if [[ ! -x $helper ]]; then
        if command -v xxhsum >/dev/null 2>&1; then
            # its styles: 'XXH3_<hex>  stdin', '<hex>  stdin' or
            # 'XXH3 (stdin) = <hex>' (Debian's 0.8.1): the hex digits
            local out
            out=$(xxhsum -H3 <"$1" 2>/dev/null | grep -o '[0-9a-f]\{16\}' | tail -n 1) || return 1
            [[ $out =~ ^[0-9a-f]{16}$ ]] || return 1
            echo "$out"
            return 0
        fi
        cat >"$helper.c" <<'EOF'
#define XXH_INLINE_ALL
#include <xxhash.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    static char buf[1 << 16];
    size_t n;
    FILE *f = argc == 2 ? fopen(argv[1], "rb") : NULL;
    XXH3_state_t *st = XXH3_createState();
    if (!f || !st)
        return 1;
    XXH3_64bits_reset(st);
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        XXH3_64bits_update(st, buf, n);
    if (ferror(f))
        return 1;
    printf("%016llx\n", (unsigned long long)XXH3_64bits_digest(st));
    return 0;
}
EOF
        "${CC:-cc}" -O1 -o "$helper" "$helper.c" >/dev/null 2>&1 || return 1
    fi
    "$helper" "$1"
}

# reseal MANIFEST: make the last line of an edited manifest.yaml
# ('manifest_xxh3: HASH', the hash of every byte before it) match again, so
# that a test reaches what lies behind the seal.
reseal() {
    local body=$BATS_TEST_TMPDIR/.reseal.$$ h
    grep -v '^manifest_xxh3: ' "$1" >"$body" || true
    h=$(xxh3 "$body") || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
    { cat "$body" && echo "manifest_xxh3: $h"; } >"$1"
    rm -f "$body"
}

# manifest_set FILE NAME BYTES HASH: rewrite the manifest entry of NAME (and
# reseal the manifest).
manifest_set() {
    sed -i -E "s/^(  - \{name: $2, bytes: )[0-9]+(, xxh3: )[0-9a-f]+\}/\1$3\2$4}/" "$1"
    reseal "$1"
}

# rehash CKPT NAME: make the manifest entry of CKPT/NAME match the file as it
# is now (so that a test reaches the parser behind the hash check).
rehash() {
    local h
    h=$(xxh3 "$1/$2") || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
    manifest_set "$1/manifest.yaml" "$2" "$(stat -c %s "$1/$2")" "$h"
}

# unprivileged CMD...: CMD without the capabilities by which root ignores
# file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: dropped from the
# bounding set, for CMD and its children) when the suite runs as root, else
# as it is: a permission test means the same for root and for a user.
unprivileged() {
    if [[ $(id -u) != 0 ]]; then
        "$@"
        return
    fi
    setpriv --bounding-set -dac_override,-dac_read_search -- "$@"
}

# need CMD PACKAGE: fail (not skip) when a tool the test needs is missing:
# a test skipped on a fresh machine is a promise nobody checks.
need() {
    command -v "$1" >/dev/null 2>&1 ||
        fail "$1 is not installed (Debian package $2; ./quickstart check installs it)"
}

# ---- infer tiers (t/100-infer-tiers.bats) ------------------------------------

# mk_noisy_data N [SEED] [AMP]: like mk_data, but the noise is uniform in
# [-AMP/2, AMP/2) (default 6), so that the classes overlap and a model
# trained on them is unsure about many records.
mk_noisy_data() {
    mk_data "$1" "${2:-7}" , "${3:-6}"
}

# elapsed_since T0: seconds since T0 (a `date +%s.%N` reading), on stdout
elapsed_since() {
    awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f\n", b - a }'
}

# same_cut_end A B: the newest cuts of checkpoint roots A and B, both a
# pipeline's last cut (no records pending), hold the same files with the
# same bytes, the manifest aside: the model, the optimizer, the counters
# and every stage's part
same_cut_end() {
    local f
    grep -qE '^cut: \{.*pending: 0\}$' "$1/latest/manifest.yaml" || fail "$1/latest is not a last cut"
    assert_equal "$(ls "$1/latest")" "$(ls "$2/latest")"
    for f in "$1"/latest/*; do
        f=${f##*/}
        [[ $f == manifest.yaml ]] && continue
        cmp "$1/latest/$f" "$2/latest/$f" || fail "$f differs between $1 and $2"
    done
    [[ -e $1/latest/stage-0.stream-ingest ]] || fail "$1/latest has no stage 0"
}
