#!/usr/bin/env bats
# 140-ckpt-merge: federated rounds.  Nodes resume from a round's checkpoint,
# learn their own records, and ckpt-merge averages them (fedavg by the
# records each learned since the round, median, trimmed mean); the values
# are checked against python3's arithmetic on the same files, the lineage in
# the manifests, and every refusal.  Fixtures: the tiny 3-class model and
# records of helpers.bash.

load helpers
bats_require_minimum_version 1.5.0

setup_file() {
    cd "$BATS_FILE_TMPDIR" || return 1
    export OPENBLAS_NUM_THREADS=1
    mk_spec spec.yaml
    mk_data 600 7 >all.csv
    head -n 40 all.csv >warm.csv
    # round 1: a warm-up training made into a round
    sgd-train -q -m spec.yaml --ckpt-dir init <warm.csv >/dev/null || return 1
    ckpt-merge -q -o r1 init || return 1
    # five nodes, shards of 60 to 140 records; node 5 learns garbage (its
    # labels shifted)
    local i from=41 n
    for i in 1 2 3 4 5; do
        n=$((40 + 20 * i))
        sed -n "${from},$((from + n - 1))p" all.csv >shard$i.csv
        from=$((from + n))
    done
    awk -F, -v OFS=, '{ $1 = ($1 + 1) % 3; print }' shard5.csv >bad.csv
    for i in 1 2 3 4; do
        sgd-train -q --resume r1 --ckpt-dir node$i <shard$i.csv >/dev/null || return 1
    done
    sgd-train -q --resume r1 --ckpt-dir node5 <bad.csv >/dev/null || return 1
}

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    F=$BATS_FILE_TMPDIR
}

# tensors CKPT...: each checkpoint's model.safetensors as "name value..."
# lines, in file order (python3, no numpy)
PYLOAD='
import json, struct, sys
def load(d, name="model.safetensors"):
    raw = open(d + "/" + name, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n]); data = raw[8 + n:]
    out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        a, b = v["data_offsets"]
        out[k] = list(struct.unpack("<%df" % ((b - a) // 4), data[a:b]))
    return out
def f32(x): return struct.unpack("<f", struct.pack("<f", x))[0]
'

# check_merge MODE OUT CKPT...: OUT's model and optimizer moments are MODE
# (fedavg with the records in the manifests, median, trimmed-mean 0.2) of
# the CKPTs', coordinate by coordinate: fedavg to 1e-6 relative, median and
# trimmed-mean exactly
check_merge() {
    python3 -c "$PYLOAD"'
import re
mode, out, ins = sys.argv[1], sys.argv[2], sys.argv[3:]
def learned(d):
    m = open(d + "/manifest.yaml").read()
    seen = int(re.search(r"^records_seen: (\d+)$", m, re.M).group(1))
    b = re.search(r"^base: .*records_seen: (\d+)", m, re.M)
    return seen - (int(b.group(1)) if b else 0)
w = [learned(d) for d in ins]
n = 0
for name in ("model.safetensors", "optimizer.safetensors"):
  got, xs = load(out, name), [load(d, name) for d in ins]
  n += len(got)
  for k, vals in got.items():
    for j, g in enumerate(vals):
      v = sorted(x[k][j] for x in xs)
      if mode == "fedavg":
        want = sum(wi * x[k][j] for wi, x in zip(w, xs)) / sum(w)
        err = abs(g - want) / max(1e-6, abs(want))
        if err > 1e-6: sys.exit("%s %s[%d]: %r, fedavg %r" % (name, k, j, g, want))
      else:
        if mode == "median":
          want = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
        else:
          c = int(0.2 * len(v)); want = sum(v[c:len(v) - c]) / (len(v) - 2 * c)
        if g != f32(want): sys.exit("%s %s[%d]: %r, %s %r" % (name, k, j, g, mode, f32(want)))
if n < 8: sys.exit("only %d tensors" % n)
print("checked %d tensors" % n)
' "$@"
}

# nodes: the five nodes' checkpoint directories (their latest)
nodes() {
    local i
    for i in "$@"; do echo "$F/node$i/latest"; done
}

@test "a round: fedavg by the records each node learned since the round, its lineage in the manifest" {
    run -0 --separate-stderr ckpt-merge -v -o r2 $(nodes 1 2 3 4)
    assert_regex "$stderr" 'r2: round 2, fedavg of 4 checkpoints, 360 records learned since their base'
    run -0 check_merge fedavg r2 $(nodes 1 2 3 4)
    # the lineage: round 2, every node with its hash, records and weight
    run -0 grep -E '^round: 2$' r2/manifest.yaml
    run -0 grep -cE '^  - \{source: ".*/node[1-4]/step-[0-9]+", manifest_xxh3: [0-9a-f]{16}, records: [0-9]+, weight: [0-9]+\}$' r2/manifest.yaml
    assert_output 4
    run -0 grep -E '^records_seen: 400$' r2/manifest.yaml
    run -0 grep -F "records: 80, weight: 80}" r2/manifest.yaml
    # the nodes named their base: round 1
    run -0 grep -E '^base: \{round: 1, manifest_xxh3: [0-9a-f]{16}, records_seen: 40, step: [0-9]+\}$' \
        "$F/node1/latest/manifest.yaml"
    # an ordinary checkpoint: verified, answered with, resumed from (and the
    # training after it names round 2 as its base)
    run -0 ckpt-pack --verify r2
    run -0 infer -m r2 --eval <"$F/all.csv"
    sgd-train -q --resume r2 --ckpt-dir next <"$F/shard1.csv" >/dev/null
    local h
    h=$(sed -n 's/^manifest_xxh3: //p' r2/manifest.yaml)
    run -0 grep -E "^base: \\{round: 2, manifest_xxh3: $h, records_seen: 400, " next/latest/manifest.yaml
    # a node calibrated (infer --calibrate) keeps its base: it can still be merged
    infer -q -m "$F/node1" --calibrate -o cal <"$F/shard1.csv"
    run -0 grep -E '^base: \{round: 1, ' cal/manifest.yaml
    run -0 ckpt-merge -q -o r2c cal "$F/node2"
}

@test "the same inputs in any order, by other paths, as directories, roots or archives: the same bytes" {
    export SOURCE_DATE_EPOCH=1700000000
    ckpt-merge -q -o a $(nodes 1 2 3 4)
    ckpt-merge -q -o b $(nodes 4 2 1 3)
    (cd "$F" && ckpt-merge -q -o "$BATS_TEST_TMPDIR/b2" ./node3/latest node2/../node2/latest \
        node1/latest "$F/node4/latest")
    ckpt-pack -q -o n3.tar.zst "$F/node3"
    ckpt-merge -q -o c "$F/node2" n3.tar.zst "$F/node4/latest" "$F/node1"
    local f
    for f in model.safetensors optimizer.safetensors state.yaml manifest.yaml; do
        cmp a/$f b/$f || fail "$f differs with the inputs in another order"
        cmp a/$f b2/$f || fail "$f differs with the inputs named by other paths"
    done
    for f in model.safetensors optimizer.safetensors state.yaml; do
        cmp a/$f c/$f || fail "$f differs with roots and an archive as inputs"
    done
    # the same checkpoint twice, by two paths: tied, and still one order
    ckpt-merge -q -o t1 "$F/node1/latest" "$F/node1/./latest"
    ckpt-merge -q -o t2 "$F/node1/./latest" "$F/node1/latest"
    cmp t1/manifest.yaml t2/manifest.yaml
    # more inputs than a few: the five nodes and five copies of them
    local i more=()
    for i in 1 2 3 4 5; do cp -r "$F/node$i" copy$i; more+=("$F/node$i/latest" copy$i/latest); done
    run -0 --separate-stderr ckpt-merge -o ten --mode median "${more[@]}"
    assert_regex "$stderr" 'median of 10 checkpoints'
    run -0 check_merge median ten "${more[@]}"
}

@test "a node sending garbage: median and trimmed-mean stay near the honest round; fedavg does not" {
    ckpt-merge -q -o honest $(nodes 1 2 3 4)
    ckpt-merge -q -o avg $(nodes 1 2 3 4 5)
    ckpt-merge -q --mode median -o med $(nodes 1 2 3 4 5)
    ckpt-merge -q --mode trimmed-mean -o tm $(nodes 1 2 3 4 5)
    run -0 check_merge median med $(nodes 1 2 3 4 5)
    run -0 check_merge trimmed-mean tm $(nodes 1 2 3 4 5)
    run -0 check_merge fedavg avg $(nodes 1 2 3 4 5)
    # accuracy on every record: the robust merges within 2 points of the
    # honest one
    local h m t a
    acc() { infer -m "$1" --eval <"$F/all.csv" 2>&1 >/dev/null | sed -n 's/.*accuracy \([0-9.]*\)$/\1/p' | head -n 1; }
    h=$(acc honest) m=$(acc med) t=$(acc tm) a=$(acc avg)
    echo "accuracy: honest $h, median $m, trimmed-mean $t, fedavg with the bad node $a" >&3
    run -0 awk -v h="$h" -v m="$m" -v t="$t" 'BEGIN { exit !(h - m <= 0.02 && h - t <= 0.02) }'
    # and fedavg, which weighs the bad node by its records, falls (it is
    # shown, not a promise: 0.42 against 1.00 here)
    run -0 awk -v h="$h" -v a="$a" 'BEGIN { exit !(h - a > 0.1) }'
    # the lineage of a median: every node with weight 1
    run -0 grep -c ', weight: 1}$' med/manifest.yaml
    assert_output 5
}

@test "--weights: fedavg with the weights given; one checkpoint merges into itself" {
    ckpt-merge -q --weights 1,0 -o w "$F/node1" "$F/node2"
    run -0 python3 -c "$PYLOAD"'
a, b = load(sys.argv[1]), load(sys.argv[2])
sys.exit(0 if a == b else "not node1'"'"'s values")' w "$F/node1/latest"
    ckpt-merge -q -o one "$F/node3"
    cmp one/model.safetensors "$F/node3/latest/model.safetensors"
}

@test "refused, naming the input, nothing written: another architecture, another base, a damaged file" {
    # another architecture: a layer of 9 units
    mk_spec other.yaml
    sed -i 's/dense: 8/dense: 9/' other.yaml
    sgd-train -q -m other.yaml --ckpt-dir other <"$F/shard1.csv" >/dev/null
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" other
    assert_regex "$stderr" '^ckpt-merge: other: another architecture than .*node1 \(a layer.s units or activation\)'
    # another activation
    mk_spec act.yaml
    sed -i 's/activation: relu/activation: tanh/' act.yaml
    sgd-train -q -m act.yaml --ckpt-dir act <"$F/shard1.csv" >/dev/null
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" act
    assert_regex "$stderr" 'act: another architecture'
    # another base: a node of another round 1, or of none
    ckpt-merge -q -o r1b "$F/node2"
    sgd-train -q --resume r1b --ckpt-dir stray <"$F/shard3.csv" >/dev/null
    # node1 is a round behind stray: named, with what merges it
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" stray
    assert_regex "$stderr" '^ckpt-merge: .*node1: started from another base than stray \(round 1, [0-9a-f]{16} against round 2, [0-9a-f]{16}\); --staleness merges older rounds'
    # a node of another federation's round 1: the same round, another base
    sgd-train -q -m "$F/spec.yaml" --seed 9 -o init9 <"$F/warm.csv" >/dev/null
    ckpt-merge -q -o r1x init9
    sgd-train -q --resume r1x -o other9 <"$F/shard3.csv" >/dev/null
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" other9
    assert_regex "$stderr" '^ckpt-merge: other9: started from another base than .*node1 \(round 1, .* against round 1, .*\); --any-parent merges them anyway'
    run -1 --separate-stderr ckpt-merge --staleness 1 -o out "$F/node1" other9
    assert_regex "$stderr" 'other9: started from another base'
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" "$F/init"
    assert_regex "$stderr" 'init: started from another base'
    run -0 ckpt-merge -q --any-parent -o any "$F/node1" stray
    run -0 grep -E '^round: 3$' any/manifest.yaml
    # a byte of a node's model changed after its manifest was written
    cp -r "$F/node1" n1
    local f
    f=$(readlink -f n1/latest)/model.safetensors
    printf '\x7f' | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") - 2)) conv=notrunc 2>/dev/null
    run -1 --separate-stderr ckpt-merge -o out n1 "$F/node2"
    assert_regex "$stderr" 'n1: .*model.safetensors: hash [0-9a-f]{16}, but its manifest says'
    # nothing written, no temporary left
    [[ ! -e out ]] || fail "out was written"
    run -0 bash -c 'ls -A | grep -c "^\.tmp" || true'
    assert_output 0
    # counters the manifest says and state.yaml does not (a resealed
    # manifest claiming 2^64 - 1 records, to outweigh every node)
    cp -r "$F/node2" n2
    f=$(readlink -f n2/latest)/manifest.yaml
    sed -i 's/^records_seen: .*/records_seen: 18446744073709551615/' "$f"
    reseal "$f"
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" n2
    assert_regex "$stderr" "n2: .*: state.yaml \(step [0-9]+, records_seen [0-9]+\) and the manifest \(step [0-9]+, records_seen 18446744073709551615\) disagree"
    # a damaged state.yaml
    cp -r "$F/node3" n3
    f=$(readlink -f n3/latest)/state.yaml
    sed -i 's/^threads: 1$/threads: 2/' "$f"
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" n3
    assert_regex "$stderr" 'n3: .*/state.yaml: hash does not match the manifest \(xxh3 [0-9a-f]{16}; the manifest says [0-9a-f]{16}\)'
    # a name that is not UTF-8
    cp -r "$F/node4" $'n\xe9'
    run -1 --separate-stderr ckpt-merge -o out "$F/node1" $'n\xe9'
    assert_regex "$stderr" 'is not UTF-8'
    [[ ! -e out ]] || fail "out was written"
    # an existing output
    mkdir out
    run -1 --separate-stderr ckpt-merge -o out "$F/node1"
    assert_regex "$stderr" 'out: already exists'
}

# weighed WEIGHT...: the products of learned records and (1 + behind)^-A
# for "RECORDS:BEHIND" pairs, comma separated (for --weights)
weighed() {
    python3 -c '
import sys
a = float(sys.argv[1])
print(",".join("%.17g" % (int(r) * (1.0 + int(b)) ** -a) for r, b in (p.split(":") for p in sys.argv[2:])))
' "$@"
}

# learned CKPT: the records CKPT learned since its base
learned() {
    python3 -c '
import re, sys
m = open(sys.argv[1] + "/manifest.yaml").read()
seen = int(re.search(r"^records_seen: (\d+)$", m, re.M).group(1))
b = re.search(r"^base: .*records_seen: (\d+)", m, re.M)
print(seen - (int(b.group(1)) if b else 0))
' "$1"
}

@test "--staleness: inputs from older rounds merged, weighed down by (1 + s)^-A; --base checks the lineage" {
    # a round 2 from nodes 1 and 2, and a node that learned from it
    ckpt-merge -q -o r2 $(nodes 1 2)
    sgd-train -q --resume r2 --ckpt-dir fresh <"$F/shard3.csv" >/dev/null
    # an asynchronous round 3: the fresh node, and nodes 3 and 4 still on round 1
    run -0 --separate-stderr ckpt-merge -v --staleness 0.5 -o r3 fresh/latest $(nodes 3 4)
    assert_regex "$stderr" 'node3/latest: [0-9]+ records since its base \(1 round behind\), weight '
    assert_regex "$stderr" 'r3: round 3, fedavg of 3 checkpoints'
    local w
    w=$(weighed 0.5 "$(learned fresh/latest):0" "$(learned "$F/node3/latest"):1" "$(learned "$F/node4/latest"):1")
    # the same as fedavg with those weights given
    ckpt-merge -q --any-parent --weights "$w" -o given fresh/latest $(nodes 3 4)
    cmp r3/model.safetensors given/model.safetensors
    cmp r3/optimizer.safetensors given/optimizer.safetensors
    # each weight in the lineage
    run -0 grep -F "weight: $(cut -d, -f2 <<<"$w")}" r3/manifest.yaml
    # --staleness 0: all weighed by their records alone
    ckpt-merge -q --staleness 0 -o flat fresh/latest $(nodes 3 4)
    ckpt-merge -q --any-parent -o anyp fresh/latest $(nodes 3 4)
    cmp flat/model.safetensors anyp/model.safetensors
    # --base: the round they follow, the same result
    ckpt-merge -q --base r2 --staleness 0.5 -o r3b fresh/latest $(nodes 3 4)
    cmp r3/model.safetensors r3b/model.safetensors
    run -0 grep -E '^round: 3$' r3b/manifest.yaml
    # an input the base merged already, one newer than the base, a base that
    # is no round
    run -1 --separate-stderr ckpt-merge --base r2 --staleness 0.5 -o out fresh/latest "$F/node1/latest"
    assert_regex "$stderr" 'node1/latest: already merged into r2 \(round 2\)'
    run -1 --separate-stderr ckpt-merge --base "$F/r1" -o out fresh/latest
    assert_regex "$stderr" 'fresh/latest: started from round 2, after .*r1 \(round 1\)'
    run -1 --separate-stderr ckpt-merge --base "$F/init" -o out "$F/node1"
    assert_regex "$stderr" 'init: not a round'
    # a training that descends from no round is not an older round
    run -1 --separate-stderr ckpt-merge --staleness 0.5 -o out fresh/latest "$F/init"
    assert_regex "$stderr" 'init: started from another base than fresh/latest \(none against round 2, [0-9a-f]{16}\); --any-parent merges them anyway'
    [ ! -e out ]
    run -2 ckpt-merge --staleness 0.5 --mode median -o out $(nodes 1 2 3)
    [[ $output == *"--staleness is for --mode fedavg"* ]]
    run -2 ckpt-merge --staleness -1 -o out $(nodes 1 2)
    run -2 ckpt-merge --staleness inf -o out $(nodes 1 2)
}

@test "--from DIR: every checkpoint that arrived (archives, directories), not hidden names, partial files or links" {
    mkdir in
    ckpt-pack -q -o in/a.tar.zst "$F/node1"
    ckpt-pack -q -o in/b.tar.zst "$F/node2"
    cp -r "$(readlink -f "$F/node3/latest")" in/c
    # what must be passed over: a receiver's partial file, a writer's
    # temporary directory, a link out of the directory, latest, other files
    head -c 100 in/a.tar.zst >in/.d.tar.zst.partial
    cp -r in/c in/.tmp-e
    ln -s "$(readlink -f "$F/node4/latest")" in/f
    ln -s a.tar.zst in/latest
    echo note >in/README
    run -0 --separate-stderr ckpt-merge -v --from in -o r2
    assert_regex "$stderr" 'r2: round 2, fedavg of 3 checkpoints'
    assert_regex "$stderr" '--from in: f is a link: not followed'
    ckpt-merge -q -o want $(nodes 1 2 3)
    cmp want/model.safetensors r2/model.safetensors
    # with checkpoints named too
    ckpt-merge -q --from in -o r2b "$F/node4/latest"
    ckpt-merge -q -o want4 $(nodes 1 2 3 4)
    cmp want4/model.safetensors r2b/model.safetensors
    # nothing arrived; no such directory; --weights cannot go with it
    mkdir empty
    run -1 --separate-stderr ckpt-merge --from empty -o out
    assert_regex "$stderr" '^ckpt-merge: --from empty: no checkpoint arrived there'
    run -1 --separate-stderr ckpt-merge --from nowhere -o out
    assert_regex "$stderr" '^ckpt-merge: --from nowhere: No such file or directory'
    run -2 ckpt-merge --from in --weights 1,2,3 -o out
    [ ! -e out ]
}

# server_check BASE PLAIN OUT LR MOM [PREV]: OUT's weights are BASE +
# LR * m with m = MOM * PREV's momentum (0 without PREV) + (PLAIN - BASE),
# PLAIN the plain merge of the same inputs, and OUT's server.safetensors
# keeps m (when MOM > 0); OUT's optimizer moments are PLAIN's
server_check() {
    python3 -c "$PYLOAD"'
b, plain, out = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
lr, mom = float(sys.argv[4]), float(sys.argv[5])
prev = load(sys.argv[6], "server.safetensors") if len(sys.argv) > 6 else None
kept = load(sys.argv[3], "server.safetensors") if mom > 0 else None
n = 0
for k, v in out.items():
    for j, g in enumerate(v):
        m = (mom * prev[k][j] if prev else 0) + (plain[k][j] - b[k][j])
        want = f32(b[k][j] + lr * m)
        if abs(g - want) > 1e-6 * max(1, abs(want)): sys.exit("%s[%d]: %r, want %r" % (k, j, g, want))
        if kept and abs(kept[k][j] - m) > 1e-6 * max(1, abs(m)): sys.exit("momentum %s[%d]: %r, want %r" % (k, j, kept[k][j], m))
        n += 1
if kept is not None and set(kept) != set(out): sys.exit("server.safetensors: %s" % sorted(kept))
print("checked %d weights" % n)
' "$@"
}

@test "--server-lr and --server-momentum: FedOpt on the average update, its momentum kept in the round" {
    ckpt-merge -q -o plain $(nodes 1 2 3 4)
    run -0 ckpt-merge -q --base "$F/r1" --server-lr 2 -o lr2 $(nodes 1 2 3 4)
    run -0 server_check "$F/r1" plain lr2 2 0
    cmp plain/optimizer.safetensors lr2/optimizer.safetensors
    [ ! -e lr2/server.safetensors ]
    # --server-lr 1 is the plain merge, byte for byte
    ckpt-merge -q --base "$F/r1" --server-lr 1 -o lr1 $(nodes 1 2 3 4)
    cmp plain/model.safetensors lr1/model.safetensors
    # momentum: round 2 starts it, round 3 goes on from what round 2 kept
    ckpt-merge -q --base "$F/r1" --server-momentum 0.5 -o m2 $(nodes 1 2 3 4)
    run -0 server_check "$F/r1" plain m2 1 0.5
    run -0 grep -E '^  - \{name: server.safetensors, bytes: [0-9]+, xxh3: [0-9a-f]{16}\}$' m2/manifest.yaml
    run -0 ckpt-pack --verify m2
    local i
    for i in 1 2 3; do
        sgd-train -q --resume m2 -o n$i <"$F/shard$i.csv" >/dev/null
    done
    ckpt-merge -q -o plain3 n1 n2 n3
    # the base as an archive, the way ckpt-ship carries it
    ckpt-pack -q -o m2.tar.zst m2
    ckpt-merge -q --base m2.tar.zst --server-lr 0.8 --server-momentum 0.5 -o m3 n1 n2 n3
    run -0 server_check m2 plain3 m3 0.8 0.5 m2
    # refused: a damaged momentum, a momentum outside a merge, the options
    # without a base or out of range
    cp -r m2 bad
    printf '\377' | dd of=bad/server.safetensors bs=1 seek=200 conv=notrunc status=none
    run -1 --separate-stderr ckpt-merge --base bad --server-momentum 0.5 -o out n1 n2 n3
    assert_regex "$stderr" '^ckpt-merge: bad: .*server.safetensors'
    cp -r n1 stray
    sed -i "/^files:/a\\  - {name: server.safetensors, bytes: 1000, xxh3: 0123456789abcdef}" stray/manifest.yaml
    reseal stray/manifest.yaml
    run -1 --separate-stderr infer -m stray <"$F/shard1.csv"
    assert_regex "$stderr" 'server.safetensors: only a merge \(a round\) has one'
    [ ! -e out ]
    run -2 ckpt-merge --server-lr 2 -o out n1 n2
    [[ $output == *"need --base CKPT"* ]]
    run -2 ckpt-merge --base m2 --server-momentum 1 -o out n1 n2
    run -2 ckpt-merge --base m2 --server-lr 0 -o out n1 n2
    run -2 ckpt-merge --base m2 --server-lr nan -o out n1 n2
}

@test "the server's step moves an averaging optimizer's raw weights too; nodes with prox on a round without" {
    mk_spec avg.yaml
    sed -i 's/momentum: 0.9}/momentum: 0.9, average: 0.9}/' avg.yaml
    sgd-train -q -m avg.yaml -o init <"$F/warm.csv" >/dev/null
    ckpt-merge -q -o a1 init
    local i
    for i in 1 2 3; do
        sgd-train -q --resume a1 --prox 0.1 -o p$i <"$F/shard$i.csv" >/dev/null
    done
    ckpt-merge -q -o plain p1 p2 p3
    ckpt-merge -q --base a1 --server-lr 2 --server-momentum 0.5 -o s p1 p2 p3
    run -0 python3 -c "$PYLOAD"'
moved = 0
for name in ("model.safetensors", "optimizer.safetensors"):
    b, plain, out = load("a1", name), load("plain", name), load("s", name)
    for k, v in out.items():
        if name == "model.safetensors" or k.endswith(".param"):
            for j, g in enumerate(v):
                want = f32(b[k][j] + 2 * (plain[k][j] - b[k][j]))
                if abs(g - want) > 1e-6 * max(1, abs(want)): sys.exit("%s %s[%d]: %r, want %r" % (name, k, j, g, want))
            moved += 1
        elif v != plain[k]:
            sys.exit("%s %s: not the plain merge" % (name, k))
kept = load("s", "server.safetensors")
if len(kept) != moved or not any(k.endswith(".param") for k in kept): sys.exit("momentum of %s" % sorted(kept))
print("moved %d tensors" % moved)
'
    assert_output 'moved 8 tensors'
    # the next round resumes from it
    sgd-train -q --resume s -o next <"$F/shard4.csv" >/dev/null
}

# anchored CKPT ANCHOR: CKPT's prox anchors are ANCHOR's weights, bit for bit
anchored() {
    python3 -c "$PYLOAD"'
o, m = load(sys.argv[1], "optimizer.safetensors"), load(sys.argv[2])
for k, v in m.items():
    a = o.get(k + ".prox_anchor")
    if a != v: sys.exit("%s.prox_anchor is not %s of %s" % (k, k, sys.argv[2]))
print("%d anchors" % len(m))
' "$@"
}

# dist CKPT REF: the distance between two checkpoints' weights
dist() {
    python3 -c "$PYLOAD"'
a, b = load(sys.argv[1]), load(sys.argv[2])
print(sum((x - y) ** 2 for k in a for x, y in zip(a[k], b[k])) ** 0.5)
' "$@"
}

@test "sgd-train --prox: anchored at the round, bit-exact resumed part-way, pulled towards it; the next round anchors anew" {
    sgd-train -q --resume "$F/r1" --prox 0.2 --ckpt-dir p --ckpt-every 3 <"$F/shard1.csv" >/dev/null
    grep -q 'prox: 0.200000003' p/latest/manifest.yaml
    anchored p/latest "$F/r1"
    # stopped part-way through the round: resumed from an early checkpoint,
    # its shard replayed (--skip-seen skips what it learned since the round,
    # not the round's own records), the spec carrying --prox: the same bytes
    local mid
    mid=$(ls -d p/step-* | head -n 1)
    [ -n "$mid" ] && [ "$(basename "$mid")" != "$(readlink p/latest)" ]
    anchored "$mid" "$F/r1"
    sgd-train -q --resume "$mid" --skip-seen --ckpt-dir q <"$F/shard1.csv" >/dev/null
    cmp p/latest/model.safetensors q/latest/model.safetensors
    cmp p/latest/optimizer.safetensors q/latest/optimizer.safetensors
    # the pull: a strong prox keeps the node nearer the round than none
    sgd-train -q --resume "$F/r1" --prox 5 -o strong <"$F/shard1.csv" >/dev/null
    sgd-train -q --resume "$F/r1" -o free <"$F/shard1.csv" >/dev/null
    python3 -c 'import sys; a, b = map(float, sys.argv[1:]); sys.exit(not a < 0.8 * b)' \
        "$(dist strong "$F/r1")" "$(dist free "$F/r1")"
    # the next round: nodes with prox merge (their anchors with them); a
    # training resumed from the merge anchors at the merge's weights
    sgd-train -q --resume "$F/r1" --prox 0.2 -o other <"$F/shard2.csv" >/dev/null
    ckpt-merge -q -o r2 p other
    run -1 ckpt-merge -q -o mixed p free
    [[ $output == *"another architecture"*"optimizer"* ]]
    sgd-train -q --resume r2 -o n2 <"$F/shard3.csv" >/dev/null
    anchored n2 r2
    # --prox 0 on resume: no anchor kept, none in the spec
    sgd-train -q --resume r2 --prox 0 -o off <"$F/shard3.csv" >/dev/null
    ! grep -q prox off/manifest.yaml
    ! grep -q prox_anchor off/optimizer.safetensors
    run -2 sgd-train -q --resume r2 --prox -1 -o bad <"$F/shard3.csv"
    [[ $output == *"prox must be a finite number >= 0"* ]]
    mk_spec bad.yaml
    sed -i 's/momentum: 0.9}/momentum: 0.9, prox: -0.5}/' bad.yaml
    run -1 sgd-train -q -m bad.yaml <"$F/shard3.csv"
    [[ $output == *"bad.yaml:"*"prox must be a finite number >= 0"* ]]
}

@test "usage errors exit 2 and say what is wrong" {
    run -2 --separate-stderr ckpt-merge "$F/node1"
    assert_regex "$stderr" '-o DIR is required'
    run -2 --separate-stderr ckpt-merge -o out
    assert_regex "$stderr" 'at least one checkpoint'
    run -2 --separate-stderr ckpt-merge -o '' "$F/node1"
    assert_regex "$stderr" 'empty directory name'
    run -2 --separate-stderr ckpt-merge --mode mean -o out "$F/node1"
    assert_regex "$stderr" '--mode mean: fedavg, median or trimmed-mean'
    run -2 --separate-stderr ckpt-merge --trim 0.1 -o out "$F/node1"
    assert_regex "$stderr" '--trim is for --mode trimmed-mean'
    run -2 --separate-stderr ckpt-merge --mode trimmed-mean --trim 0.5 -o out "$F/node1"
    assert_regex "$stderr" 'trim 0.5'
    run -2 --separate-stderr ckpt-merge --weights 1 -o out "$F/node1" "$F/node2"
    assert_regex "$stderr" '--weights: 1 weights for 2 checkpoints'
    run -2 --separate-stderr ckpt-merge --weights 1,-1 -o out "$F/node1" "$F/node2"
    assert_regex "$stderr" 'weight 2 is -1'
    run -2 --separate-stderr ckpt-merge --weights 1,,2 -o out "$F/node1" "$F/node2"
    assert_regex "$stderr" 'an empty weight'
    run -2 --separate-stderr ckpt-merge --weights 0,0 -o out "$F/node1" "$F/node2"
    assert_regex "$stderr" 'sum to 0'
    run -2 --separate-stderr ckpt-merge --mode median --weights 1,1 -o out "$F/node1" "$F/node2"
    assert_regex "$stderr" '--weights is for --mode fedavg'
    run -2 --separate-stderr ckpt-merge -o out -
    assert_regex "$stderr" 'give each checkpoint as a file or a directory'
    [[ ! -e out ]] || fail "out was written"
    run -0 --separate-stderr ckpt-merge --help
    assert_line --index 0 'Usage: ckpt-merge [OPTION]... -o DIR CKPT...'
    run -0 ckpt-merge --version
    assert_output 'ckpt-merge (mini-nn) 0.1.0'
}
