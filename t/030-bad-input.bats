#!/usr/bin/env bats
# 030-bad-input: every kind of bad input gets the documented exit status and
# a message that says where and what: records, model specs, checkpoints
# (damaged, truncated, lying), write errors, --on-error=skip.

bats_require_minimum_version 1.5.0
load helpers

setup_file() {
    cd "$BATS_FILE_TMPDIR"
    mk_spec spec.yaml
    mk_data 600 7 >train.csv
    sgd-train -q -m spec.yaml -o ck <train.csv >/dev/null
}

setup() {
    fixtures
    CK=$BATS_FILE_TMPDIR/ck
    [[ -f $CK/manifest.yaml ]] || fail "setup_file could not train $CK"
}

# bad_record PROG TEXT: TEXT (printf format) after two good records, to PROG;
# expects exit 1
bad_record() {
    local p=$1
    {
        printf '0,2,-1,-1,0.5\n1,-1,2,-1,0.5\n'
        printf -- "$2"
    } >bad.csv
    case $p in
    sgd-train) run -1 --separate-stderr sgd-train -q -m spec.yaml -o out <bad.csv ;;
    infer) run -1 --separate-stderr infer -m "$CK" <bad.csv ;;
    esac
    [[ ! -e out ]] || fail "$p left a checkpoint after bad input"
}

# bad_sparse PROG TEXT: like bad_record with a sparse stream
bad_sparse() {
    local p=$1
    {
        printf '0 1:2 2:-1 3:-1 4:0.5\n1 1:-1 2:2\n'
        printf -- "$2"
    } >bad.svm
    case $p in
    sgd-train) run -1 --separate-stderr sgd-train -q -m spec.yaml -o out <bad.svm ;;
    infer) run -1 --separate-stderr infer -m "$CK" <bad.svm ;;
    esac
    [[ ! -e out ]] || fail "$p left a checkpoint after bad input"
}

# ---- records ------------------------------------------------------------------

@test "malformed line: exit 1, message names stdin:LINE" {
    for p in sgd-train infer; do
        bad_record "$p" '2,-1,-1,two,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: field 4: 'two' is not a number"
    done
}

@test "line numbers count '#' lines and empty lines" {
    for p in sgd-train infer; do
        bad_record "$p" '# c\n\n#!ckpt 3\n\n2,x,-1,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:7: field 2: 'x' is not a number"
    done
}

@test "wrong feature count: too few, too many, trailing comma" {
    for p in sgd-train infer; do
        bad_record "$p" '2,-1,-1,2\n'
        assert_regex "$stderr" "^$p: stdin:3: 4 fields, expected 5"
        bad_record "$p" '2,-1,-1,2,0.5,7\n'
        assert_regex "$stderr" "^$p: stdin:3: 6 fields, expected 5"
        bad_record "$p" '2,-1,-1,2,0.5,\n'
        assert_regex "$stderr" "^$p: stdin:3: 6 fields, expected 5"
        bad_record "$p" '2\n'
        assert_regex "$stderr" "^$p: stdin:3: 1 fields?, expected 5"
    done
}

@test "empty field and number with junk: not a number" {
    for p in sgd-train infer; do
        bad_record "$p" '2,-1,,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: field 3: '' is not a number"
        bad_record "$p" '2,-1,1x,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: field 3: '1x' is not a number"
        bad_record "$p" '2,-1,0x10,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: field 3: '0x10' is not a number"
        bad_record "$p" '2,-1,1e,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: field 3: '1e' is not a number"
    done
}

@test "label out of range: 3 and -1 for 3 classes" {
    for p in sgd-train infer; do
        bad_record "$p" '3,-1,-1,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: label 3 out of range 0\.\.2"
        bad_record "$p" '-1,-1,-1,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: label -1 out of range 0\.\.2"
    done
}

@test "non-integer label" {
    for p in sgd-train infer; do
        bad_record "$p" '1.5,-1,-1,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: label '1\.5' is not a class id"
        bad_record "$p" 'cat,-1,-1,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: label 'cat' is not a number"
    done
}

@test "integral label written as a real (2.0, 1e0) is accepted" {
    printf '0,2,-1,-1,0.5\n2.0,-1,-1,2,0.5\n1e0,-1,2,-1,0.5\n' >ok.csv
    run -0 sgd-train -q -m spec.yaml -o out <ok.csv
    run -0 infer -m "$CK" <ok.csv
    assert_equal "${#lines[@]}" 3
}

@test "NaN, Inf, -Infinity values: not finite" {
    for p in sgd-train infer; do
        for v in NaN nan inf Inf -inf Infinity -Infinity; do
            bad_record "$p" "2,-1,$v,2,0.5\\n"
            assert_regex "$stderr" "^$p: stdin:3: field 3: '$v' is not finite"
        done
        bad_record "$p" 'nan,-1,-1,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: label 'nan' is not finite"
    done
}

@test "1e999 and float overflow (1e39) are not finite; 1e-999 is zero" {
    for p in sgd-train infer; do
        bad_record "$p" '2,-1,1e999,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: field 3: '1e999' is not finite"
        bad_record "$p" '2,-1,-1e39,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: field 3: '-1e39' is not finite"
    done
    printf '0,2,-1,-1,1e-999\n' >tiny.csv
    run -0 infer -m "$CK" <tiny.csv
}

@test "a huge exponent after many zeros is still huge (found by fuzz-records)" {
    # 0.(99990 zeros)1e1000000 is 1e900009: not finite, not 1e9
    local z
    z=$(printf '%099990d' 0)
    for p in sgd-train infer; do
        bad_record "$p" "2,-1,0.${z}1e1000000,2,0.5\n"
        assert_regex "$stderr" "^$p: stdin:3: field 3: '0\\.0+.*' is not finite"
    done
    # and the same digits with a small exponent are a small number
    printf '0,2,-1,-1,0.%s1e99990\n' "$z" >small.csv
    run -0 infer -m "$CK" <small.csv
}

@test "empty input to sgd-train: exit 1, no checkpoint" {
    run -1 --separate-stderr sgd-train -q -m spec.yaml -o out </dev/null
    assert_regex "$stderr" '^sgd-train: stdin: no records to learn from'
    assert_output ""
    [[ ! -e out ]]
}

@test "only comments and empty lines to sgd-train: exit 1, no checkpoint" {
    printf '# a\n\n#!ckpt 1\n\n' >c.csv
    run -1 --separate-stderr sgd-train -q -m spec.yaml -o out <c.csv
    assert_regex "$stderr" '^sgd-train: stdin: no records to learn from'
    [[ ! -e out ]]
    run -0 ls -A
    refute_output --partial ".tmp-"
}

@test "sparse: index 0, index out of range, not ascending, repeated" {
    for p in sgd-train infer; do
        bad_sparse "$p" '2 0:1 3:2\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 1: index 0 \\(indices are 1-based\\)"
        bad_sparse "$p" '2 3:2 5:1\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 2: index 5 exceeds the 4 features"
        bad_sparse "$p" '2 3:2 1:1\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 2: index 1 not ascending"
        bad_sparse "$p" '2 3:2 3:1\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 2: index 3 not ascending"
    done
}

@test "sparse: malformed pairs and values" {
    for p in sgd-train infer; do
        bad_sparse "$p" '2 3\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 1: '3' is not idx:value"
        bad_sparse "$p" '2 x:1\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 1: index in 'x:1' is not a positive integer"
        bad_sparse "$p" '2 3:\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 1: '' is not a number"
        bad_sparse "$p" '2 3:nan\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 1: 'nan' is not finite"
        bad_sparse "$p" '2 3:1e999\n'
        assert_regex "$stderr" "^$p: stdin:3: pair 1: '1e999' is not finite"
        bad_sparse "$p" '7 3:1\n'
        assert_regex "$stderr" "^$p: stdin:3: label 7 out of range"
    done
}

@test "mixing dense and sparse: exit 1 naming the line" {
    for p in sgd-train infer; do
        # sparse record in a dense stream
        bad_record "$p" '2 1:-1 3:2\n'
        assert_regex "$stderr" "^$p: stdin:3: "
        # dense record in a sparse stream
        bad_sparse "$p" '2,-1,-1,2,0.5\n'
        assert_regex "$stderr" "^$p: stdin:3: "
    done
}

@test "mixing dense and sparse: the message says which format was mixed in" {
    for p in sgd-train infer; do
        bad_record "$p" '2 1:-1 3:2\n'
        assert_regex "$stderr" "^$p: stdin:3: sparse \\(idx:value\\) record in a dense stream"
        bad_sparse "$p" '2,-1,-1,2,0.5\n'
        # must not blame the label: say the record is dense in a sparse stream
        assert_regex "$stderr" "^$p: stdin:3: .*dense.*sparse"
    done
}

# ---- --on-error=skip ------------------------------------------------------------

@test "sgd-train --on-error=skip: counts the skipped lines and learns the rest" {
    # 7 bad lines spread over the stream; the good ones are train.csv
    awk 'NR == 10 { print "9,1,1,1,1" }
         NR == 20 { print "1,x,1,1,1" }
         NR == 30 { print "1,1,1" }
         NR == 40 { print "1 1:2" }
         NR == 50 { print "1,nan,1,1,1" }
         NR == 60 { print "1.5,1,1,1,1" }
         NR == 70 { print "1,1,1,1,1,1" }
         { print }' train.csv >dirty.csv
    run -0 --separate-stderr sgd-train -q --on-error=skip -m spec.yaml -o dirty <dirty.csv
    assert_output dirty
    # the first 5 are reported one by one, then silence, then the count
    run -0 grep -c '(skipped)$' <<<"$stderr"
    assert_output 5
    assert_regex "$stderr" '^sgd-train: stdin:10: label 9 out of range 0\.\.2 \(skipped\)'
    assert_regex "$stderr" 'more bad records are skipped silently'
    assert_regex "$stderr" 'sgd-train: skipped 7 bad records \(first: stdin:10: label 9 out of range'
    # the good records alone give the same model
    train_ckpt clean
    cmp clean/model.safetensors dirty/model.safetensors
    assert_equal "$(sed -n 's/^records_seen: //p' dirty/state.yaml)" 600
}

@test "sgd-train --on-error=skip: one bad record, singular message" {
    { echo "1,a,1,1,1"; cat train.csv; } >dirty.csv
    run -0 --separate-stderr sgd-train -q --on-error=skip -m spec.yaml -o dirty <dirty.csv
    assert_regex "$stderr" 'sgd-train: skipped 1 bad record \(first: stdin:1: '
}

@test "sgd-train --on-error=skip with only bad records: exit 1" {
    printf '1,a,1,1,1\n7,1,1,1,1\n' >allbad.csv
    run -1 --separate-stderr sgd-train -q --on-error=skip -m spec.yaml -o out <allbad.csv
    assert_regex "$stderr" 'no records to learn from \(all were skipped as bad\)'
    [[ ! -e out ]]
}

@test "sgd-train --on-error=fail is the default" {
    { echo "1,a,1,1,1"; cat train.csv; } >dirty.csv
    run -1 --separate-stderr sgd-train -q --on-error=fail -m spec.yaml -o out <dirty.csv
    assert_regex "$stderr" '^sgd-train: stdin:1: '
    [[ ! -e out ]]
}

@test "infer --on-error=skip: no line for a bad record, the rest in order, count at exit" {
    awk 'NR == 3 { print "1,x,1,1,1" } NR == 77 { print "5,1,1,1,1" } { print }' test.csv >dirty.csv
    infer -m "$CK" <test.csv >clean.txt
    run -0 --separate-stderr infer -m "$CK" --on-error=skip <dirty.csv
    assert_output "$(cat clean.txt)"
    assert_regex "$stderr" '^infer: stdin:3: field 2: .x. is not a number \(skipped\)'
    assert_regex "$stderr" 'infer: skipped 2 bad records \(first: stdin:3: '
}

@test "infer --on-error=skip --eval: scores the good records only" {
    awk 'NR == 3 { print "1,x,1,1,1" } { print }' test.csv >dirty.csv
    run -0 --separate-stderr infer -m "$CK" --on-error=skip --eval <dirty.csv
    assert_regex "$stderr" 'infer: eval: 150 records'
    assert_regex "$stderr" 'skipped 1 bad record'
}

# ---- model specs -----------------------------------------------------------------

@test "invalid YAML: exit 1, message has file:line:column" {
    printf 'input: 4\nclasses: [3\nlayers:\n  - {dense: 3}\n' >bad.yaml
    run -1 --separate-stderr sgd-train -q -m bad.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: bad\.yaml:[0-9]+:[0-9]+: invalid YAML'
    printf 'input: 4\n\tclasses: 3\n' >tab.yaml
    run -1 --separate-stderr sgd-train -q -m tab.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: tab\.yaml:2:1: invalid YAML'
    [[ ! -e out ]]
}

@test "unknown key in the spec: names the key and its line:column" {
    mk_spec bad.yaml 'learning_rate: 0.1'
    run -1 --separate-stderr sgd-train -q -m bad.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad\\.yaml:10:1: unknown key 'learning_rate' in the model spec"
    # nested: in a layer
    mk_spec bad2.yaml
    sed -i 's/{dense: 8, activation: relu}/{dense: 8, activation: relu, dropout: 0.5}/' bad2.yaml
    run -1 --separate-stderr sgd-train -q -m bad2.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad2\\.yaml:5:[0-9]+: unknown key 'dropout' in a layer"
    # nested: in the optimizer
    mk_spec bad3.yaml
    sed -i 's/^optimizer: {type: sgd,/optimizer: {type: sgd, nesterov: 1,/' bad3.yaml
    run -1 --separate-stderr sgd-train -q -m bad3.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad3\\.yaml:7:[0-9]+: unknown key 'nesterov' in optimizer"
}

@test "wrong type in the spec: names the field, its line:column" {
    mk_spec bad.yaml
    sed -i 's/^input: 4/input: four/' bad.yaml
    run -1 --separate-stderr sgd-train -q -m bad.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad\\.yaml:2:8: input: 'four' is not a non-negative integer"
    mk_spec bad2.yaml
    sed -i 's/^layers:$/layers: 3/; /^  - /d' bad2.yaml
    run -1 --separate-stderr sgd-train -q -m bad2.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad2\\.yaml:4:[0-9]+: layers must be a list"
    mk_spec bad3.yaml
    sed -i 's/lr: 0.1/lr: fast/' bad3.yaml
    run -1 --separate-stderr sgd-train -q -m bad3.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad3\\.yaml:7:[0-9]+: lr: 'fast' is not a finite number"
    mk_spec bad4.yaml
    sed -i 's/activation: relu/activation: swish/' bad4.yaml
    run -1 --separate-stderr sgd-train -q -m bad4.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad4\\.yaml:5:[0-9]+: activation: unknown value 'swish'"
    [[ ! -e out ]]
}

@test "impossible values in the spec: batch 0, momentum 1.5, classes 1" {
    mk_spec bad.yaml
    sed -i 's/^batch: 4/batch: 0/' bad.yaml
    run -1 --separate-stderr sgd-train -q -m bad.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: bad\.yaml:8:8: batch must be between 1 and'
    mk_spec bad2.yaml
    sed -i 's/momentum: 0.9/momentum: 1.5/' bad2.yaml
    run -1 --separate-stderr sgd-train -q -m bad2.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: bad2\.yaml:7:[0-9]+: momentum must be in \[0, 1\)'
    mk_spec bad3.yaml
    sed -i 's/^classes: 3/classes: 1/; s/{dense: 3}/{dense: 1}/' bad3.yaml
    run -1 --separate-stderr sgd-train -q -m bad3.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: bad3\.yaml:3:10: classes must be at least 2'
}

@test "duplicate key and missing required keys in the spec" {
    mk_spec bad.yaml 'input: 5'
    run -1 --separate-stderr sgd-train -q -m bad.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad\\.yaml:10:1: duplicate key 'input'"
    mk_spec bad2.yaml
    sed -i '/^input:/d' bad2.yaml
    run -1 --separate-stderr sgd-train -q -m bad2.yaml -o out <train.csv
    assert_regex "$stderr" "^sgd-train: bad2\\.yaml:[0-9]+:[0-9]+: 'input: N' is required"
    : >empty.yaml
    run -1 --separate-stderr sgd-train -q -m empty.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: empty\.yaml:1:1: empty document'
}

@test "last layer width != classes: exit 1, names both numbers" {
    mk_spec bad.yaml
    sed -i 's/{dense: 3}/{dense: 5}/' bad.yaml
    run -1 --separate-stderr sgd-train -q -m bad.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: bad\.yaml:[0-9]+:[0-9]+: the last layer has 5 units but the model has 3 classes'
    [[ ! -e out ]]
}

@test "missing spec file or a directory: exit 1 naming it" {
    run -1 --separate-stderr sgd-train -q -m nope.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: nope\.yaml: No such file or directory'
    mkdir d.yaml
    run -1 --separate-stderr sgd-train -q -m d.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: d\.yaml: is a directory'
    [[ ! -e out ]]
}

@test "a record stream whose width does not match the spec's input" {
    mk_spec wide.yaml
    sed -i 's/^input: 4/input: 5/' wide.yaml
    run -1 --separate-stderr sgd-train -q -m wide.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: stdin:1: 5 fields, expected 6 \(label \+ 5 features\)'
}

# ---- output ----------------------------------------------------------------------

@test "sgd-train > /dev/full: exit 1 with a write error message" {
    run -1 --separate-stderr to_full sgd-train -q -m spec.yaml -o out <train.csv
    assert_regex "$stderr" '^sgd-train: write error.*No space left on device'
}

@test "sgd-train -o in a directory that does not exist: exit 1, nothing left" {
    run -1 --separate-stderr sgd-train -q -m spec.yaml -o nodir/ck <train.csv
    assert_regex "$stderr" '^sgd-train: nodir/'
    assert_output ""
    [[ ! -e nodir ]]
}

@test "sgd-train -o in a read-only directory: exit 1, nothing left" {
    mkdir ro
    chmod a-w ro
    # as an unprivileged user: root ignores directory permissions
    run -1 --separate-stderr unprivileged sgd-train -q -m spec.yaml -o ro/ck <train.csv
    chmod u+w ro
    assert_regex "$stderr" '^sgd-train: ro/'
    run -0 ls -A ro
    assert_output ""
}

# ---- checkpoints -------------------------------------------------------------------

@test "infer with a missing checkpoint directory: exit 1 naming it" {
    run -1 --separate-stderr infer -m nope <test.csv
    assert_regex "$stderr" '^infer: nope: No such file or directory'
    assert_output ""
}

@test "infer -m a directory that is not a checkpoint, or a file" {
    mkdir empty
    run -1 --separate-stderr infer -m empty <test.csv
    assert_regex "$stderr" '^infer: empty: not a checkpoint'
    run -1 --separate-stderr infer -m test.csv <test.csv
    assert_regex "$stderr" '^infer: test\.csv: not zstd-compressed: a checkpoint archive is a \.tar\.zst'
}

@test "a flipped byte in model.safetensors: exit 1, hash mismatch against the manifest" {
    cp -r "$CK" ck
    # flip one bit of a weight (in the data, past the header)
    local size off
    size=$(stat -c %s ck/model.safetensors)
    off=$((size - 10))
    printf "\\x$(printf %02x $((0x$(od -An -tx1 -j "$off" -N1 ck/model.safetensors | tr -d ' ') ^ 1)))" |
        dd of=ck/model.safetensors bs=1 seek="$off" conv=notrunc status=none
    run -1 cmp -s "$CK/model.safetensors" ck/model.safetensors
    assert_equal "$(stat -c %s ck/model.safetensors)" "$size"
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/model\.safetensors: hash does not match the manifest'
    assert_output ""
}

@test "a changed state.yaml or optimizer.safetensors is caught by the manifest" {
    cp -r "$CK" ck
    # the same size: only the hash can tell
    sed -i 's/^step: 150$/step: 151/' ck/state.yaml
    run -1 --separate-stderr sgd-train -q --resume ck -o out <train.csv
    assert_regex "$stderr" '^sgd-train: ck/state\.yaml: hash does not match the manifest \(xxh3 [0-9a-f]{16}; the manifest says [0-9a-f]{16}\)$'
    cp "$CK/state.yaml" ck/state.yaml
    printf 'x' | dd of=ck/optimizer.safetensors bs=1 seek=200 conv=notrunc status=none
    run -1 --separate-stderr sgd-train -q --resume ck -o out <train.csv
    assert_regex "$stderr" '^sgd-train: ck/optimizer\.safetensors: hash does not match the manifest'
    [[ ! -e out ]]
}

@test "a state.yaml and a manifest that disagree (both sealed and hashed): refused" {
    cp -r "$CK" ck
    sed -i 's/^records_seen: 600$/records_seen: 599/' ck/state.yaml
    rehash ck state.yaml
    run -1 --separate-stderr sgd-train -q --resume ck -o out <train.csv
    assert_regex "$stderr" '^sgd-train: ck: state\.yaml \(step 150, records_seen 599\) and the manifest \(step 150, records_seen 600\) disagree$'
}

@test "an edited manifest.yaml is refused for its hash, whatever the edit" {
    cp -r "$CK" ck
    # a change that keeps it valid YAML and a valid spec: only the seal tells
    sed -i 's/^  seed: 1$/  seed: 2/' ck/manifest.yaml
    run -1 cmp -s "$CK/manifest.yaml" ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/manifest\.yaml: hash does not match its contents'
    # the seal line itself removed, or moved
    cp "$CK/manifest.yaml" ck/manifest.yaml
    sed -i '$d' ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" "^infer: ck/manifest\\.yaml: no 'manifest_xxh3: HASH' line at its end"
    cp "$CK/manifest.yaml" ck/manifest.yaml
    echo 'step: 3' >>ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" "^infer: ck/manifest\\.yaml: no 'manifest_xxh3: HASH' line at its end"
    # and once resealed the same edit goes through
    cp "$CK/manifest.yaml" ck/manifest.yaml
    sed -i 's/^  seed: 1$/  seed: 2/' ck/manifest.yaml
    reseal ck/manifest.yaml
    run -0 infer -m ck <test.csv
}

@test "a truncated model.safetensors: exit 1, size mismatch" {
    cp -r "$CK" ck
    truncate -s 100 ck/model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/model\.safetensors: size does not match the manifest \(100 bytes'
}

@test "a missing model.safetensors: exit 1" {
    cp -r "$CK" ck
    rm ck/model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/model\.safetensors: missing'
}

@test "a missing file that the manifest lists (optimizer.safetensors): exit 1" {
    cp -r "$CK" ck
    rm ck/optimizer.safetensors
    run -1 --separate-stderr sgd-train -q --resume ck -o out <train.csv
    assert_regex "$stderr" '^sgd-train: ck/optimizer\.safetensors: missing'
    run -1 --separate-stderr ckpt-pack --verify ck
    assert_regex "$stderr" '^ckpt-pack: ck/optimizer\.safetensors: missing'
}

@test "a manifest that does not list model.safetensors: exit 1" {
    cp -r "$CK" ck
    sed -i '/name: model.safetensors/d' ck/manifest.yaml
    reseal ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/manifest\.yaml: the manifest does not list model\.safetensors'
}

@test "a manifest without its files list: exit 1" {
    cp -r "$CK" ck
    sed -i '/^files:/,$d' ck/manifest.yaml
    reseal ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/manifest\.yaml:[0-9]+:[0-9]+: the files list is missing'
}

@test "a manifest without step or records_seen: refused, saying which (found by fuzz-manifest)" {
    local k
    for k in step records_seen; do
        cp -r "$CK" "ck-$k"
        sed -i "/^$k: /d" "ck-$k/manifest.yaml"
        reseal "ck-$k/manifest.yaml"
        run -1 --separate-stderr infer -m "ck-$k" <test.csv
        assert_regex "$stderr" "^infer: ck-$k/manifest\\.yaml:[0-9]+:[0-9]+: step and records_seen are required$"
    done
}

@test "a manifest with a foreign format or broken YAML: exit 1" {
    cp -r "$CK" ck
    sed -i 's/^format: .*/format: something-else/' ck/manifest.yaml
    reseal ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/manifest\.yaml: not a mini-nn-checkpoint/1 manifest'
    cp "$CK/manifest.yaml" ck/manifest.yaml
    echo 'extra: [' >>ck/manifest.yaml
    reseal ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/manifest\.yaml:[0-9]+:[0-9]+: invalid YAML'
}

@test "a manifest file entry that escapes the directory is refused" {
    cp -r "$CK" ck
    sed -i 's/name: state.yaml/name: ..\/..\/state.yaml/' ck/manifest.yaml
    reseal ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" "^infer: ck/manifest\\.yaml:[0-9]+:[0-9]+: file name '\\.\\./\\.\\./state\\.yaml' is not a plain name"
}

@test "the XXH3 helper agrees with the manifest (so the tests below reach the parser)" {
    local h
    h=$(xxh3 "$CK/model.safetensors") || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
    run -0 grep -F "{name: model.safetensors, bytes: $(stat -c %s "$CK/model.safetensors"), xxh3: $h}" "$CK/manifest.yaml"
}

@test "safetensors header that claims 4 GiB (manifest rewritten to match): exit 1" {
    cp -r "$CK" ck
    # length prefix 0x0000000100000000 = 4 GiB, the rest of the file as it was
    printf '\x00\x00\x00\x00\x01\x00\x00\x00' |
        dd of=ck/model.safetensors bs=1 seek=0 conv=notrunc status=none
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    # the hash check passed: the complaint is the parser's
    refute_regex "$stderr" 'does not match the manifest'
    assert_regex "$stderr" '^infer: ck/model\.safetensors: header claims 4294967296 bytes but the file has [0-9]+ after the length'
}

@test "safetensors header longer than the file / huge length: exit 1" {
    cp -r "$CK" ck
    printf '\xff\xff\xff\xff\xff\xff\xff\xff' |
        dd of=ck/model.safetensors bs=1 seek=0 conv=notrunc status=none
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/model\.safetensors: header claims 18446744073709551615 bytes'
}

@test "a file smaller or larger than its model spec allows (manifest rewritten): refused from the manifest" {
    cp -r "$CK" ck
    truncate -s 5 ck/model.safetensors
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    refute_regex "$stderr" 'does not match the manifest'
    assert_regex "$stderr" '^infer: ck/manifest\.yaml: model\.safetensors: 5 bytes, but its model spec allows [0-9]+ to [0-9]+$'
    # a manifest that claims 10 GB, the file untouched: refused before a read
    cp "$CK/model.safetensors" "$CK/manifest.yaml" ck/
    manifest_set ck/manifest.yaml optimizer.safetensors 10000000000 0123456789abcdef
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/manifest\.yaml: optimizer\.safetensors: 10000000000 bytes, but its model spec allows [0-9]+ to [0-9]+$'
}

@test "safetensors truncated in its data (manifest rewritten): exit 1" {
    cp -r "$CK" ck
    truncate -s -4 ck/model.safetensors
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    refute_regex "$stderr" 'does not match the manifest'
    assert_regex "$stderr" "^infer: ck/model\\.safetensors: tensor '[^']+': data_offsets outside the [0-9]+ data bytes"
}

@test "safetensors header that claims more than the file holds (manifest rewritten): exit 1" {
    cp -r "$CK" ck
    local size
    size=$(stat -c %s ck/model.safetensors)
    # a header length one byte longer than the file after it; the size as it was
    perl -e 'open(F, "+<", $ARGV[0]) or die; print F pack("Q<", $ARGV[1] - 7); close(F)' \
        ck/model.safetensors "$size" 
    assert_equal "$(stat -c %s ck/model.safetensors)" "$size"
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    refute_regex "$stderr" 'does not match the manifest'
    assert_regex "$stderr" '^infer: ck/model\.safetensors: header claims [0-9]+ bytes but the file has [0-9]+ after the length'
}

@test "safetensors with trailing bytes (manifest rewritten): exit 1" {
    cp -r "$CK" ck
    printf 'junk' >>ck/model.safetensors
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/model\.safetensors: 4 bytes after the last tensor'
}

@test "safetensors header that is not JSON (manifest rewritten): exit 1" {
    cp -r "$CK" ck
    # overwrite the opening '{' of the header
    printf '[' | dd of=ck/model.safetensors bs=1 seek=8 conv=notrunc status=none
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" '^infer: ck/model\.safetensors: (the header is not a JSON object|bad JSON header)'
}

@test "safetensors dtype that does not fit its offsets (F32 -> F64): exit 1" {
    cp -r "$CK" ck
    # same length, so the rest of the file stays valid
    sed -i '0,/"layers.0.bias":{"dtype":"F32"/s//"layers.0.bias":{"dtype":"F64"/' ck/model.safetensors
    run -0 grep -c -a '"layers.0.bias":{"dtype":"F64"' ck/model.safetensors
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" "^infer: ck/model\\.safetensors: tensor 'layers\\.0\\.bias': [0-9]+ bytes do not match its shape"
}

@test "safetensors tensor with a shape the model does not have: exit 1" {
    cp -r "$CK" ck
    # layers.0.weight [8,4] -> [4,8]: same size, wrong layout
    sed -i 's/"layers.0.weight":{"dtype":"F32","shape":\[8,4\]/"layers.0.weight":{"dtype":"F32","shape":[4,8]/' \
        ck/model.safetensors
    run -0 grep -c -a '"shape":\[4,8\]' ck/model.safetensors
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" "^infer: ck/model\\.safetensors: tensor 'layers\\.0\\.weight' has shape \\[4,.*\\] but the model needs \\[8,"
}

@test "safetensors tensor renamed away: exit 1 naming the missing tensor" {
    cp -r "$CK" ck
    sed -i 's/"layers.1.bias"/"layers.1.bia_"/' ck/model.safetensors
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" "^infer: ck/model\\.safetensors: tensor 'layers\\.1\\.bias' is missing"
}

@test "a NaN weight (manifest rewritten): exit 1, weight not finite" {
    cp -r "$CK" ck
    local size
    size=$(stat -c %s ck/model.safetensors)
    # the last 4 bytes are a float32: make it a quiet NaN (LE 00 00 c0 7f)
    printf '\x00\x00\xc0\x7f' | dd of=ck/model.safetensors bs=1 seek=$((size - 4)) conv=notrunc status=none
    rehash ck model.safetensors
    run -1 --separate-stderr infer -m ck <test.csv
    # the last float of the file is the last of layers.1.weight [3,8]
    assert_regex "$stderr" "^infer: ck: layers\\.1\\.weight\\[23\\] is not finite \\(nan\\)$"
}

# put_last FILE HEXBYTES: overwrite the last bytes of FILE (as many as given)
put_last() {
    local size n=$((${#2} / 4))
    size=$(stat -c %s "$1")
    printf "$2" | dd of="$1" bs=1 seek=$((size - n)) conv=notrunc status=none
}

@test "non-finite or negative optimizer state, non-finite normalization (files rehashed): refused" {
    cp -r "$CK" ck
    # the last float of optimizer.safetensors: the momentum of layers.1.weight [3,8]
    put_last ck/optimizer.safetensors '\x00\x00\xc0\x7f'
    rehash ck optimizer.safetensors
    run -1 --separate-stderr sgd-train -q --resume ck -o out <train.csv
    assert_equal "$stderr" "sgd-train: ck: layers.1.weight.momentum_buffer[23] is not finite (nan)"
    [[ ! -e out ]]
    # +Inf
    put_last ck/optimizer.safetensors '\x00\x00\x80\x7f'
    rehash ck optimizer.safetensors
    run -1 --separate-stderr sgd-train -q --resume ck -o out <train.csv
    assert_equal "$stderr" "sgd-train: ck: layers.1.weight.momentum_buffer[23] is not finite (inf)"
    # Adam's second moment below 0 (its sqrt would be NaN)
    mk_spec adam.yaml
    sed -i 's/^optimizer: .*/optimizer: {type: adam, lr: 0.01}/' adam.yaml
    sgd-train -q -m adam.yaml -o ad <train.csv >/dev/null
    put_last ad/optimizer.safetensors '\x00\x00\x80\xbf' # -1.0
    rehash ad optimizer.safetensors
    run -1 --separate-stderr sgd-train -q --resume ad -o out <train.csv
    assert_equal "$stderr" "sgd-train: ad: layers.1.weight.exp_avg_sq[23] is negative (-1)"
    # the running normalization's mean (F64, the last tensor of model.safetensors)
    mk_spec norm.yaml 'normalize: running'
    sgd-train -q -m norm.yaml -o nm <train.csv >/dev/null
    put_last nm/model.safetensors '\x00\x00\x00\x00\x00\x00\xf8\x7f'
    rehash nm model.safetensors
    run -1 --separate-stderr infer -m nm <test.csv
    assert_equal "$stderr" "infer: nm: normalize.mean[3] is not finite"
    assert_output ""
}

@test "a manifest whose model spec does not fit the weights: exit 1, both shapes named" {
    cp -r "$CK" ck
    sed -i 's/^  input: 4$/  input: 5/' ck/manifest.yaml
    reseal ck/manifest.yaml
    run -1 --separate-stderr infer -m ck <test.csv
    assert_regex "$stderr" "^infer: ck/model\\.safetensors: tensor 'layers\\.0\\.weight' has shape"
    # the message must show how the shapes differ: [8,4] stored, [8,5] needed
    assert_regex "$stderr" '\[8,4\].*\[8,5\]'
}
