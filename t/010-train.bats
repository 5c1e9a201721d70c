#!/usr/bin/env bats
# 010-train: sgd-train end to end: the checkpoint it writes, determinism,
# the progressive table, --out/--force, learning, input formats, SIGTERM.

bats_require_minimum_version 1.5.0
load helpers

setup() {
    fixtures
}

# accuracy CKPT DATA: the accuracy infer --eval reports
accuracy() {
    infer -m "$1" --eval <"$2" 2>&1 >/dev/null |
        sed -n 's/^infer: eval: .*accuracy \([0-9.]*\)$/\1/p'
}

# assert_ge X Y: X >= Y as numbers
assert_ge() {
    awk -v x="$1" -v y="$2" 'BEGIN { exit !(x != "" && x + 0 >= y + 0) }' ||
        fail "expected $1 >= $2"
}

@test "prints the checkpoint path on stdout, and nothing else" {
    run -0 --separate-stderr sgd-train -m spec.yaml -o ck <train.csv
    assert_output "ck"
    [[ -d ck ]]
    # the diagnostics are on stderr
    assert_regex "$stderr" "sgd-train: 600 records, 150 steps"
}

@test "the path is printed as given, also in a subdirectory" {
    mkdir sub
    run -0 --separate-stderr sgd-train -q -m spec.yaml -o sub/model-1 <train.csv
    assert_output "sub/model-1"
    [[ -f sub/model-1/manifest.yaml ]]
}

@test "default --out is model.ckpt in the current directory" {
    run -0 --separate-stderr sgd-train -q -m spec.yaml <train.csv
    assert_output "model.ckpt"
    [[ -f model.ckpt/model.safetensors ]]
}

@test "checkpoint holds exactly manifest.yaml, model.safetensors, optimizer.safetensors, state.yaml" {
    train_ckpt ck
    run -0 ls -A ck
    assert_output "$(printf '%s\n' manifest.yaml model.safetensors optimizer.safetensors state.yaml)"
}

@test "manifest: format, tool, created, counters, spec and a hash for every file" {
    train_ckpt ck
    assert_equal "$(field ck/manifest.yaml format)" "mini-nn-checkpoint/1"
    assert_equal "$(field ck/manifest.yaml tool)" "mini-nn 0.1.0"
    assert_regex "$(field ck/manifest.yaml created)" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$'
    assert_equal "$(field ck/manifest.yaml step)" 150
    assert_equal "$(field ck/manifest.yaml records_seen)" 600
    assert_equal "$(field ck/manifest.yaml parent)" null
    run -0 grep -E '^  (input: 4|classes: 3|batch: 4|seed: 1)$' ck/manifest.yaml
    assert_equal "${#lines[@]}" 4
    for f in model.safetensors optimizer.safetensors state.yaml; do
        run -0 grep -E "^  - \{name: $f, bytes: $(stat -c %s ck/$f), xxh3: [0-9a-f]{16}\}$" ck/manifest.yaml
    done
}

@test "state.yaml: step, records_seen, rng state" {
    train_ckpt ck
    assert_equal "$(field ck/state.yaml step)" 150
    assert_equal "$(field ck/state.yaml records_seen)" 600
    assert_regex "$(field ck/state.yaml rng)" '^\[[0-9]+, [0-9]+, [0-9]+, [0-9]+\]$'
}

@test "same input and seed: identical model.safetensors, optimizer and state bytes" {
    train_ckpt a
    train_ckpt b
    cmp a/model.safetensors b/model.safetensors
    cmp a/optimizer.safetensors b/optimizer.safetensors
    cmp a/state.yaml b/state.yaml
}

@test "with SOURCE_DATE_EPOCH the whole checkpoint directory is identical" {
    SOURCE_DATE_EPOCH=1700000000 train_ckpt a
    SOURCE_DATE_EPOCH=1700000000 train_ckpt b
    run -0 diff -r a b
    assert_equal "$(field a/manifest.yaml created)" "2023-11-14T22:13:20Z"
}

@test "a different --seed gives different weights; the same --seed the same" {
    train_ckpt a
    train_ckpt b --seed 2
    train_ckpt c --seed 2
    run -1 cmp -s a/model.safetensors b/model.safetensors
    cmp b/model.safetensors c/model.safetensors
    run -0 grep -x '  seed: 2' b/manifest.yaml
}

@test "--seed 1 on the command line equals seed: 1 in the spec" {
    train_ckpt a
    train_ckpt b --seed 1
    cmp a/model.safetensors b/model.safetensors
}

@test "progressive table on stderr at doubling record counts" {
    run -0 --separate-stderr sgd-train -m spec.yaml -o ck <train.csv
    # header, then one row per doubling of the record count, then the final
    # partial report at 600
    assert_regex "${stderr_lines[0]}" '^ *records +avg_loss +since_last +prog_acc +rec/s$'
    local counts
    counts=$(printf '%s\n' "${stderr_lines[@]}" | awk '/^ *[0-9]+ / { print $1 }' | tr '\n' ' ')
    assert_equal "$counts" "4 8 16 32 64 128 256 512 600 "
    # every row: records avg_loss since_last accuracy-in-[0,1] rate
    local row
    for row in "${stderr_lines[@]:1:9}"; do
        assert_regex "$row" '^ *[0-9]+ +[0-9]+\.[0-9]{6} +[0-9]+\.[0-9]{6} +[01]\.[0-9]{4} +[0-9]+$'
    done
    assert_regex "$stderr" $'\n''sgd-train: 600 records, 150 steps, average loss [0-9.]+, progressive accuracy 0\.9[0-9]+'
}

@test "progressive table follows --batch: doubling from the batch size" {
    run -0 --separate-stderr sgd-train -m spec.yaml -o ck --batch 10 <train.csv
    local counts
    counts=$(printf '%s\n' "${stderr_lines[@]}" | awk '/^ *[0-9]+ / { print $1 }' | tr '\n' ' ')
    assert_equal "$counts" "10 20 40 80 160 320 600 "
    assert_equal "$(field ck/state.yaml step)" 60
    run -0 grep -x '  batch: 10' ck/manifest.yaml
}

@test "-q silences the table and the summary" {
    run -0 --separate-stderr sgd-train -q -m spec.yaml -o ck <train.csv
    assert_output "ck"
    assert_equal "$stderr" ""
}

@test "--out that exists: exit 1, existing checkpoint untouched" {
    train_ckpt ck
    local before
    before=$(cd ck && sha256sum * && stat -c '%n %Y %s' *)
    run -1 --separate-stderr sgd-train -q -m spec.yaml -o ck --seed 2 <train.csv
    assert_output ""
    assert_regex "$stderr" '^sgd-train: ck: already exists.*--force'
    assert_equal "$(cd ck && sha256sum * && stat -c '%n %Y %s' *)" "$before"
}

@test "--out that is a regular file: exit 1, file untouched" {
    echo precious >ck
    run -1 --separate-stderr sgd-train -q -m spec.yaml -o ck <train.csv
    assert_regex "$stderr" 'already exists'
    assert_equal "$(cat ck)" precious
}

@test "--force replaces an existing checkpoint" {
    train_ckpt ck
    cp ck/model.safetensors old.safetensors
    run -0 --separate-stderr sgd-train -q -f -m spec.yaml -o ck --seed 2 <train.csv
    assert_output "ck"
    run -1 cmp -s old.safetensors ck/model.safetensors
    train_ckpt ref --seed 2
    cmp ref/model.safetensors ck/model.safetensors
    run -0 infer -m ck <test.csv
    run -0 ls -A
    refute_output --partial ".tmp-"
}

@test "--force does not clobber a directory that is not a checkpoint" {
    mkdir ck
    echo precious >ck/notes.txt
    run -1 --separate-stderr sgd-train -q --force -m spec.yaml -o ck <train.csv
    assert_regex "$stderr" '^sgd-train: ck: '
    assert_equal "$(cat ck/notes.txt)" precious
    run -0 ls -A ck
    assert_output notes.txt
    run -0 ls -A
    refute_output --partial ".tmp-"
}

@test "learns the separable toy problem (held-out accuracy >= 0.95)" {
    train_ckpt ck
    local acc
    acc=$(accuracy ck test.csv)
    assert_ge "$acc" 0.95
}

@test "adam: trains, records adam moments, learns" {
    run -0 --separate-stderr sgd-train -q -m spec.yaml -o ck --optimizer adam --lr 0.01 <train.csv
    run -0 grep -E '^  optimizer: \{type: adam, lr: 0.0(1|099999)' ck/manifest.yaml
    run -0 grep -a -c 'exp_avg_sq' ck/optimizer.safetensors
    assert_ge "$(accuracy ck test.csv)" 0.95
    # and differs from the sgd run
    train_ckpt sgd
    run -1 cmp -s sgd/model.safetensors ck/model.safetensors
}

@test "adam from the spec gets the adam default lr 0.001" {
    mk_spec adam.yaml
    sed -i 's/^optimizer: .*/optimizer: {type: adam}/' adam.yaml
    run -0 sgd-train -q -m adam.yaml -o ck <train.csv
    run -0 grep -E '^  optimizer: \{type: adam, lr: 0.00100000005' ck/manifest.yaml
}

@test "--lr, --momentum, --weight-decay, --lr-decay, --average override the spec" {
    run -0 sgd-train -q -m spec.yaml -o ck --lr 0.05 --momentum 0.5 --weight-decay 0.001 --lr-decay 0.01 --average 0.5 <train.csv
    run -0 grep -E '^  optimizer: \{type: sgd, lr: 0.0500000007, momentum: 0.5, weight_decay: 0.00100000005, lr_decay: 0.00999999978, average: 0.5\}' ck/manifest.yaml
    train_ckpt ref
    run -1 cmp -s ref/model.safetensors ck/model.safetensors
}

@test "tab-separated input trains the same model as comma-separated" {
    mk_data 600 7 $'\t' >train.tsv
    run -0 grep -c $'\t' train.tsv
    assert_output 600
    train_ckpt comma
    run -0 sgd-train -q -m spec.yaml -o tab <train.tsv
    cmp comma/model.safetensors tab/model.safetensors
}

@test "sparse (libsvm) input trains the same model as the dense records" {
    to_sparse <train.csv >train.svm
    run -0 head -n1 train.svm
    assert_output --regexp '^0 1:[-0-9.]+ 2:[-0-9.]+ 3:[-0-9.]+ 4:[-0-9.]+$'
    train_ckpt dense
    run -0 sgd-train -q -m spec.yaml -o sparse <train.svm
    cmp dense/model.safetensors sparse/model.safetensors
}

@test "sparse input with missing (zero) features" {
    # drop feature 4 and zero feature 1 of every third record: still valid
    awk -F, '{ printf "%s", $1; if (NR % 3) printf " 1:%s", $2; printf " 2:%s 3:%s\n", $3, $4 }' \
        train.csv >train.svm
    awk -F, '{ printf "%s,%s,%s,%s,0\n", $1, (NR % 3) ? $2 : 0, $3, $4 }' train.csv >zeros.csv
    run -0 sgd-train -q -m spec.yaml -o sparse <train.svm
    run -0 sgd-train -q -m spec.yaml -o dense <zeros.csv
    cmp dense/model.safetensors sparse/model.safetensors
}

@test "'#' lines, empty lines and CRLF line ends do not change the model" {
    awk 'NR % 50 == 1 { print "# comment " NR; print "" } { print } NR % 7 == 0 { print "#!ckpt x" }' \
        train.csv >commented.csv
    sed 's/$/\r/' train.csv >crlf.csv
    printf '\n\n# header\n' >lead.csv
    cat train.csv >>lead.csv
    train_ckpt plain
    for f in commented lead crlf; do
        run -0 --separate-stderr sgd-train -q -m spec.yaml -o "$f" <"$f.csv"
        cmp plain/model.safetensors "$f/model.safetensors"
        assert_equal "$(field "$f/state.yaml" records_seen)" 600
    done
}

@test "a last line without a newline is a record" {
    head -c -1 train.csv >nonl.csv
    run -0 sgd-train -q -m spec.yaml -o ck <nonl.csv
    assert_equal "$(field ck/state.yaml records_seen)" 600
}

@test "a final partial batch is learned (601 records, batch 4: 151 steps)" {
    mk_data 601 7 >odd.csv
    run -0 sgd-train -q -m spec.yaml -o ck <odd.csv
    assert_equal "$(field ck/state.yaml records_seen)" 601
    assert_equal "$(field ck/state.yaml step)" 151
}

@test "SIGTERM mid-stream: exit 3 (stopped before the end of input), a loadable checkpoint, its path on stdout" {
    mkfifo in
    sgd-train -m spec.yaml -o ck <in >out 2>err 3>&- &
    local pid=$! rc=0
    exec 7>in
    cat train.csv >&7
    # the stream stays open: wait until training is under way, then stop it
    wait_for_match err '^ +512 ' || { kill -9 "$pid"; fail "no progress: $(cat err)"; }
    kill -TERM "$pid"
    # it must stop without the end of input: the writer is still open
    wait_gone "$pid" || { kill -9 "$pid"; fail "sgd-train still running 10 s after SIGTERM"; }
    wait "$pid" || rc=$?
    exec 7>&-
    assert_equal "$rc" 3 # stopped before the end of its input
    assert_equal "$(cat out)" "ck"
    run -0 grep -E '^sgd-train: stopping on a signal after [0-9]+ records, before the end of the input \(exit status 3\)$' err
    local seen
    seen=$(field ck/state.yaml records_seen)
    assert_ge "$seen" 512
    run -0 infer -m ck <test.csv
    assert_equal "${#lines[@]}" 150
    run -0 ls -A
    refute_output --partial ".tmp-"
}

@test "SIGTERM while a slow producer is still writing: exit 3, checkpoint" {
    (
        echo "$BASHPID" >producer.pid
        cat train.csv
        exec sleep 30
    ) 3>&- | sgd-train -m spec.yaml -o ck >out 2>err 3>&- &
    local pid=$! rc=0
    wait_for_match err '^ +512 ' || fail "no progress: $(cat err)"
    # $! is the last process of the pipeline: sgd-train
    kill -TERM "$pid"
    # bash's wait on a pipeline member waits for the whole pipeline: first
    # see sgd-train gone (it must not need the end of input), then end the
    # producer
    local gone=0
    wait_gone "$pid" || gone=$?
    kill "$(cat producer.pid)"
    wait "$pid" || rc=$?
    assert_equal "$gone" 0 # else: still running 10 s after SIGTERM
    assert_equal "$rc" 3 # stopped before the end of its input
    assert_equal "$(cat out)" "ck"
    run -0 grep -E '^sgd-train: stopping on a signal' err
    run -0 infer -m ck <test.csv
    assert_equal "${#lines[@]}" 150
}

teardown() {
    # never leave the slow producer running
    if [[ -f $BATS_TEST_TMPDIR/producer.pid ]]; then
        kill "$(cat "$BATS_TEST_TMPDIR/producer.pid")" 2>/dev/null || true
    fi
}

@test "SIGINT mid-stream also stops cleanly with exit 3" {
    mkfifo in
    sgd-train -m spec.yaml -o ck <in >out 2>err 3>&- &
    local pid=$! rc=0
    exec 7>in
    cat train.csv >&7
    wait_for_match err '^ +512 ' || { kill -9 "$pid"; fail "no progress"; }
    kill -INT "$pid"
    wait_gone "$pid" || { kill -9 "$pid"; fail "sgd-train still running 10 s after SIGINT"; }
    wait "$pid" || rc=$?
    exec 7>&-
    assert_equal "$rc" 3 # stopped before the end of its input
    assert_equal "$(cat out)" "ck"
    [[ -f ck/manifest.yaml ]]
}

@test "an invalid SOURCE_DATE_EPOCH is an error; no checkpoint is left" {
    SOURCE_DATE_EPOCH=yesterday run -2 --separate-stderr sgd-train -q -m spec.yaml -o ck <train.csv
    assert_regex "$stderr" "^sgd-train: SOURCE_DATE_EPOCH: 'yesterday'"
    assert_output ""
    [[ ! -e ck ]]
    run -0 find . -name '.tmp-*'
    assert_output ""
}

@test "no .tmp- directory is left behind" {
    train_ckpt ck
    train_ckpt ck --force
    run -0 find . -name '.tmp-*'
    assert_output ""
}

@test "normalize: running learns badly scaled features and keeps its state" {
    mk_spec norm.yaml 'normalize: running'
    # features scaled by 1000 and shifted by 5000
    awk -F, -v OFS=, '{ for (j = 2; j <= NF; j++) $j = sprintf("%.1f", $j * 1000 + 5000); print }' \
        train.csv >big.csv
    awk -F, -v OFS=, '{ for (j = 2; j <= NF; j++) $j = sprintf("%.1f", $j * 1000 + 5000); print }' \
        test.csv >bigtest.csv
    run -0 --separate-stderr sgd-train -q -m norm.yaml -o ck <big.csv
    run -0 grep -x '  normalize: running' ck/manifest.yaml
    run -0 grep -a -c 'normalize.mean' ck/model.safetensors
    run -0 grep -a -c '"normalize_count":"600"' ck/model.safetensors
    assert_ge "$(accuracy ck bigtest.csv)" 0.95
}

@test "normalize: running is deterministic too" {
    mk_spec norm.yaml 'normalize: running'
    sgd-train -q -m norm.yaml -o a <train.csv
    sgd-train -q -m norm.yaml -o b <train.csv
    cmp a/model.safetensors b/model.safetensors
}

@test "regression (outputs: 1, loss: mse): trains, table shows no accuracy" {
    mk_reg_spec reg.yaml
    mk_reg_data 800 >reg.csv
    run -0 --separate-stderr sgd-train -m reg.yaml -o ck <reg.csv
    assert_output ck
    assert_regex "${stderr_lines[1]}" '^ *4 +[0-9.]+ +[0-9.]+ +- +[0-9]+$'
    assert_regex "$stderr" 'sgd-train: 800 records, 200 steps, average loss [0-9]+\.[0-9]{6}$'
    refute_regex "$stderr" 'progressive accuracy'
    run -0 grep -E '^  outputs: 1$' ck/manifest.yaml
    run -0 grep -E '^  loss: mse$' ck/manifest.yaml
}

@test "model.safetensors and optimizer.safetensors follow the safetensors format" {
    need python3 python3
    train_ckpt ck
    run -0 python3 - ck/model.safetensors ck/optimizer.safetensors <<'EOF'
import json, struct, sys

def check(path, names):
    b = open(path, 'rb').read()
    assert len(b) >= 8, 'shorter than the length prefix'
    n, = struct.unpack('<Q', b[:8])
    assert 8 + n <= len(b), 'header longer than the file'
    raw = b[8:8 + n]
    assert raw.rstrip(b' ')[-1:] == b'}', 'header does not end with } (+ spaces)'
    assert (8 + n) % 8 == 0, 'data not 8-byte aligned'
    h = json.loads(raw)
    assert h['__metadata__']['format'] == 'pt', h['__metadata__']
    assert all(isinstance(v, str) for v in h['__metadata__'].values())
    tensors = {k: v for k, v in h.items() if k != '__metadata__'}
    assert sorted(tensors) == sorted(names), sorted(tensors)
    spans = []
    for k, v in tensors.items():
        assert v['dtype'] == 'F32', (k, v)
        assert set(v) == {'dtype', 'shape', 'data_offsets'}, (k, v)
        count = 1
        for d in v['shape']:
            count *= d
        lo, hi = v['data_offsets']
        assert hi - lo == 4 * count, (k, v)
        spans.append((lo, hi))
    spans.sort()
    at = 0
    for lo, hi in spans:
        assert lo == at, ('gap or overlap', lo, at)
        at = hi
    assert 8 + n + at == len(b), ('trailing bytes', len(b) - 8 - n - at)
    return h, b[8 + n:]

h, data = check(sys.argv[1], ['layers.0.weight', 'layers.0.bias',
                              'layers.1.weight', 'layers.1.bias'])
assert h['layers.0.weight']['shape'] == [8, 4], h['layers.0.weight']
assert h['layers.0.bias']['shape'] == [8]
assert h['layers.1.weight']['shape'] == [3, 8], h['layers.1.weight']
assert h['layers.1.bias']['shape'] == [3]
lo, hi = h['layers.0.weight']['data_offsets']
w = struct.unpack('<%df' % ((hi - lo) // 4), data[lo:hi])
assert all(abs(x) < 1e3 for x in w) and any(x != 0 for x in w)
ho, _ = check(sys.argv[2], [p + '.momentum_buffer' for p in
                            ['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias']])
assert ho['layers.0.weight.momentum_buffer']['shape'] == [8, 4]
print('ok')
EOF
    assert_output ok
}

@test "an independent reader (python3: json, struct) reproduces infer --proba to 1e-5" {
    need python3 python3
    train_ckpt ck
    head -n 20 test.csv >few.csv
    infer -m ck --proba <few.csv >proba.txt
    run -0 python3 - ck/model.safetensors few.csv proba.txt <<'EOF'
import json, math, struct, sys
b = open(sys.argv[1], 'rb').read()
n, = struct.unpack('<Q', b[:8])
h = json.loads(b[8:8 + n])
data = b[8 + n:]
def t(name):
    lo, hi = h[name]['data_offsets']
    v = struct.unpack('<%df' % ((hi - lo) // 4), data[lo:hi])
    shape = h[name]['shape']
    if len(shape) == 2:
        return [list(v[r * shape[1]:(r + 1) * shape[1]]) for r in range(shape[0])]
    return list(v)
W0, b0, W1, b1 = t('layers.0.weight'), t('layers.0.bias'), t('layers.1.weight'), t('layers.1.bias')
worst = 0
for rec, out in zip(open(sys.argv[2]), open(sys.argv[3])):
    x = [float(f) for f in rec.strip().split(',')[1:]]
    hid = [max(0.0, sum(w * xi for w, xi in zip(row, x)) + bb) for row, bb in zip(W0, b0)]
    z = [sum(w * hi for w, hi in zip(row, hid)) + bb for row, bb in zip(W1, b1)]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    p = [v / sum(e) for v in e]
    got = [float(v) for v in out.strip().split(',')]
    worst = max(worst, max(abs(a - c) for a, c in zip(p, got)))
assert worst < 1e-5, worst
print('ok')
EOF
    assert_output ok
}

@test "exits: [0] trains the exit head beside the layers: exits.0.* in both safetensors, the spec in the manifest" {
    need python3 python3
    mk_spec spec.yaml 'exits: [0]' 'exit_weights: [0.5]' 'temperature: 1.5'
    run -0 --separate-stderr sgd-train -m spec.yaml -o ck <train.csv
    assert_output ck
    run -0 grep -x '  exits: \[0\]' ck/manifest.yaml
    run -0 grep -x '  exit_weights: \[0.5\]' ck/manifest.yaml
    run -0 grep -x '  temperature: 1.5' ck/manifest.yaml
    run -0 python3 - ck/model.safetensors ck/optimizer.safetensors <<'PY'
import json, struct, sys
def header(path):
    b = open(path, 'rb').read()
    n, = struct.unpack('<Q', b[:8])
    return {k: v for k, v in json.loads(b[8:8 + n]).items() if k != '__metadata__'}
m, o = header(sys.argv[1]), header(sys.argv[2])
assert sorted(m) == ['exits.0.bias', 'exits.0.weight', 'layers.0.bias', 'layers.0.weight',
                     'layers.1.bias', 'layers.1.weight'], sorted(m)
assert m['exits.0.weight']['shape'] == [3, 8], m['exits.0.weight']
assert m['exits.0.bias']['shape'] == [3], m['exits.0.bias']
assert sorted(o) == sorted(k + '.momentum_buffer' for k in m), sorted(o)
print('ok')
PY
    assert_output ok
    assert_ge "$(accuracy ck test.csv)" 0.95
}

@test "exits: the reported loss and accuracy are the final head's: exit_weights [0] reports what no exits does" {
    sgd-train -m spec.yaml -o plain <train.csv 2>plain.err >/dev/null
    mk_spec spec.yaml 'exits: [0]' 'exit_weights: [0]'
    sgd-train -m spec.yaml -o zero <train.csv 2>zero.err >/dev/null
    # the table without its rec/s column, and the summary
    run -0 diff <(awk 'NF == 5 { print $1, $2, $3, $4 }' plain.err) \
        <(awk 'NF == 5 { print $1, $2, $3, $4 }' zero.err)
    run -0 grep -c '^ *600 ' zero.err
    run -0 diff <(grep 'average loss' plain.err) <(grep 'average loss' zero.err)
    assert_output ''
}

@test "exits: --resume continues bit-exactly with exit heads (SGD and Adam)" {
    local opt k
    for opt in 'type: sgd, lr: 0.1, momentum: 0.9' 'type: adam, lr: 0.01, average: 0.9'; do
        mk_spec spec.yaml 'exits: [0]' 'exit_weights: [0.3]'
        sed -i "s/^optimizer: .*/optimizer: {$opt}/" spec.yaml
        sgd-train -q -m spec.yaml -o straight <train.csv >/dev/null
        for k in 1 75; do
            head -n $((k * 4)) train.csv | sgd-train -q -m spec.yaml -o part >/dev/null
            run -0 sgd-train -q --resume part --skip-seen -o resumed <train.csv
            run -0 cmp straight/model.safetensors resumed/model.safetensors
            run -0 cmp straight/optimizer.safetensors resumed/optimizer.safetensors
            run -0 cmp straight/state.yaml resumed/state.yaml
            rm -rf part resumed
        done
        rm -rf straight
    done
}
