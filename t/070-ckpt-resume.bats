#!/usr/bin/env bats
# 070-ckpt-resume: ckpt-resume checks a checkpoint, adapts it to the machine
# (threads, batch size and learning rate, memory) and runs sgd-train --resume
# with the options that follow the checkpoint; --inspect prints what a
# checkpoint holds.

load helpers
bats_require_minimum_version 1.5.0

setup() {
    fixtures
    CORES=$(getconf _NPROCESSORS_ONLN) # what sysconf(_SC_NPROCESSORS_ONLN) says
}

# fake_sgd: point MNN_SGD_TRAIN at a stand-in for sgd-train that writes its
# arguments, one per line, to ./argv and its standard input to ./stdin, and
# exits with $FAKE_RC (default 0).
fake_sgd() {
    FAKE=$BATS_TEST_TMPDIR/fake-sgd-train
    cat >"$FAKE" <<EOF
#!/bin/sh
printf '%s\n' "\$@" >"$BATS_TEST_TMPDIR/argv"
cat >"$BATS_TEST_TMPDIR/stdin"
exit \${FAKE_RC:-0}
EOF
    chmod +x "$FAKE"
    export MNN_SGD_TRAIN=$FAKE
}

# not_run: the fake sgd-train was not started
not_run() {
    [[ ! -e $BATS_TEST_TMPDIR/argv ]] || fail "sgd-train was run: $(tr '\n' ' ' <"$BATS_TEST_TMPDIR/argv")"
}

# flip_byte FILE OFFSET: change one byte of FILE in place
flip_byte() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    # shellcheck disable=SC2059
    printf "\\$(printf %03o $((b ^ 0x20)))" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

# lineage: the entries of the lineage list in $output (--inspect), unquoted
lineage() {
    awk '/^lineage:/ { on = 1; next } /^[^ ]/ { on = 0 } on' <<<"$output" | sed 's/^  - "\(.*\)"$/\1/'
}

@test "--help, --version and usage errors" {
    run -0 --separate-stderr ckpt-resume --help
    assert_line --partial 'Usage: ckpt-resume [OPTION]... CKPT [SGD-TRAIN-OPTION]...'
    assert_equal "$stderr" ""
    run -0 ckpt-resume --version
    assert_output --regexp '^ckpt-resume \(mini-nn\) [0-9]+\.[0-9]+\.[0-9]+$'
    train_ckpt ck
    fake_sgd
    run -2 --separate-stderr ckpt-resume --bogus ck
    assert_output ""
    run -2 --separate-stderr ckpt-resume
    assert_equal "$stderr" "ckpt-resume: a checkpoint is required (a directory, an archive, or -)
Try 'ckpt-resume --help' for more information."
    run -2 ckpt-resume --batch 0 ck
    run -2 ckpt-resume --batch 4x ck
    run -2 ckpt-resume --threads 0 ck
    run -2 ckpt-resume --threads 1025 ck
    run -2 --separate-stderr ckpt-resume --inspect ck -o x
    assert_output ""
    assert_equal "${stderr_lines[0]}" "ckpt-resume: --inspect takes no sgd-train options"
    not_run
}

@test "--inspect: step, records_seen, parameter count, layer shapes, files with their hashes" {
    train_ckpt ck
    run -0 --separate-stderr ckpt-resume --inspect ck
    assert_equal "$stderr" ""
    assert_line 'checkpoint: "ck"'
    assert_line 'format: mini-nn-checkpoint/1'
    assert_line --regexp '^tool: "mini-nn [0-9]+\.[0-9]+\.[0-9]+"$'
    assert_line --regexp '^created: [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$'
    assert_line 'step: 150'
    assert_line 'records_seen: 600'
    # 4*8+8 + 8*3+3
    assert_line 'parameters: 67'
    assert_line 'input: 4'
    assert_line 'classes: 3'
    assert_line 'optimizer: sgd'
    assert_line 'batch: 4'
    local want
    want=$(printf '%s\n' 'layers:' \
        '  - {weight: [8, 4], bias: [8], activation: relu}' \
        '  - {weight: [3, 8], bias: [3], activation: none}' 'optimizer: sgd')
    assert_output --partial "$want"
    # no parent: the lineage is the checkpoint alone
    assert_equal "$(lineage)" ck
    local f h
    for f in model.safetensors optimizer.safetensors state.yaml; do
        h=$(xxh3 "ck/$f") || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
        assert_line "  - {name: $f, bytes: $(stat -c %s "ck/$f"), xxh3: $h}"
    done
    assert_equal "${lines[-1]}" "  - {name: state.yaml, bytes: $(stat -c %s ck/state.yaml), xxh3: $h}"
    # the fields in order
    run -0 --separate-stderr ckpt-resume --inspect ck
    assert_equal "$(grep -o '^[a-z_]*:' <<<"$output" | tr -d '\n')" \
        "checkpoint:format:tool:created:step:records_seen:parameters:input:classes:layers:optimizer:batch:lineage:files:"
}

@test "--inspect: a regression model, Adam, a root through its latest link" {
    mk_reg_spec reg.yaml
    sed -i 's/^optimizer: .*/optimizer: {type: adam, lr: 0.01}/' reg.yaml
    mk_reg_data 40 | sgd-train -q -m reg.yaml --ckpt-dir root >/dev/null
    run -0 ckpt-resume --inspect root
    assert_line 'outputs: 1'
    refute_line --partial 'classes:'
    # 2*8+8 + 8*1+1
    assert_line 'parameters: 33'
    assert_line '  - {weight: [8, 2], bias: [8], activation: tanh}'
    assert_line '  - {weight: [1, 8], bias: [1], activation: none}'
    assert_line 'optimizer: adam'
    assert_line 'step: 10'
    assert_line 'records_seen: 40'
    assert_line 'checkpoint: "root"'
}

@test "--inspect follows the lineage through the parents that exist beside the checkpoint" {
    # the writer keeps up and every checkpoint asked for is taken
    stepwise 3 --ckpt-dir ck
    run -0 cat paths
    assert_output $'ck/step-00000010\nck/step-00000020\nck/step-00000030'
    run -0 ckpt-resume --inspect ck/latest
    assert_equal "$(lineage)" $'ck/latest\nstep-00000020\nstep-00000010'
    run -0 ckpt-resume --inspect ck/step-00000020
    assert_equal "$(lineage)" $'ck/step-00000020\nstep-00000010'
    # a parent that is gone ends the list: it is named, its own parents not
    rm -r ck/step-00000020
    run -0 ckpt-resume --inspect ck
    assert_equal "$(lineage)" $'ck\nstep-00000020'
}

@test "--dry-run: --resume DIR [--threads N], then the options after CKPT" {
    train_ckpt ck
    fake_sgd
    # no --threads: sgd-train takes the checkpoint's own count
    run -0 --separate-stderr ckpt-resume -n ck
    assert_output "$FAKE --resume ck"
    assert_equal "$stderr" ""
    run -0 ckpt-resume --dry-run --threads 3 ck --ckpt-dir x -q
    assert_output "$FAKE --resume ck --threads 3 --ckpt-dir x -q"
    # a checkpoint root: the checkpoint its latest link names
    sgd-train -q -m spec.yaml --ckpt-dir root <train.csv >/dev/null
    run -0 ckpt-resume -n --threads 2 root
    assert_output "$FAKE --resume root/latest --threads 2"
    not_run
    # without MNN_SGD_TRAIN: the sgd-train beside ckpt-resume
    unset MNN_SGD_TRAIN
    run -0 ckpt-resume -n ck
    local first=${output%% *}
    assert_equal "${first##*/}" sgd-train
    [[ $first == /* && -x $first ]] || fail "not an executable absolute path: $first"
}

@test "the BLAS thread count is recorded, kept on resume (the README's recipe is bit-exact), and another one is said" {
    head -n 300 train.csv | sgd-train -q -m spec.yaml -o part >/dev/null
    sgd-train -q -m spec.yaml -o straight <train.csv >/dev/null
    assert_equal "$(field part/state.yaml threads)" 1
    # as the README writes it: no OPENBLAS_NUM_THREADS where it resumes
    run -0 --separate-stderr env -u OPENBLAS_NUM_THREADS ckpt-resume -q part -q --skip-seen -o resumed <train.csv
    assert_equal "$stderr" ""
    assert_equal "$(field resumed/state.yaml threads)" 1
    run -0 cmp straight/model.safetensors resumed/model.safetensors
    run -0 cmp straight/optimizer.safetensors resumed/optimizer.safetensors
    # another count, asked for: said, and recorded as what the training ran on
    run -0 --separate-stderr env -u OPENBLAS_NUM_THREADS ckpt-resume -q --threads 2 part --skip-seen -o r2 <train.csv
    assert_regex "$stderr" "(^|"$'\n'")sgd-train: --threads 2: part was trained on 1 BLAS thread; on another count the result is not bit-exact with a training that never stopped"$'\n'
    assert_equal "$(field r2/state.yaml threads)" 2
}

@test "--batch N scales the learning rate by N / the stored batch (linear scaling)" {
    train_ckpt ck
    fake_sgd
    # the stored lr is the float nearest 0.1, 0.100000001490116...; twice that
    # printed with %.9g
    run -0 --separate-stderr ckpt-resume -n --batch 8 --threads 1 ck
    assert_output "$FAKE --resume ck --threads 1 --batch 8 --lr 0.200000003"
    assert_equal "$stderr" "ckpt-resume: batch 8 instead of 4: learning rate 0.200000003 instead of 0.100000001"
    run -0 --separate-stderr ckpt-resume -q -n --batch 8 --threads 1 ck
    assert_equal "$stderr" ""
    # an exact case: 0.125 * 12 / 4
    mk_spec spec2.yaml
    sed -i 's/lr: 0.1,/lr: 0.125,/' spec2.yaml
    sgd-train -q -m spec2.yaml -o ck2 <train.csv >/dev/null
    run -0 ckpt-resume -q -n --batch 12 --threads 1 ck2
    assert_output "$FAKE --resume ck2 --threads 1 --batch 12 --lr 0.375"
    run -0 ckpt-resume -q -n --batch 2 --threads 1 ck2
    assert_output "$FAKE --resume ck2 --threads 1 --batch 2 --lr 0.0625"
    # the stored batch: nothing to change
    run -0 --separate-stderr ckpt-resume -n --batch 4 --threads 1 ck2
    assert_output "$FAKE --resume ck2 --threads 1"
    assert_equal "$stderr" ""
}

@test "sgd-train gets the arguments, standard input and exit status; -v shows the command" {
    train_ckpt ck
    fake_sgd
    run -0 --separate-stderr ckpt-resume -v --threads 2 ck -o 'a b' --skip-seen <train.csv
    assert_equal "$stderr" "ckpt-resume: running $FAKE --resume ck --threads 2 -o a b --skip-seen"
    run -0 cat argv
    assert_output $'--resume\nck\n--threads\n2\n-o\na b\n--skip-seen'
    run -0 cmp stdin train.csv
    FAKE_RC=7 run -7 ckpt-resume ck </dev/null
}

@test "a resume through ckpt-resume equals sgd-train --resume and a run that never stopped, bit for bit" {
    sgd-train -q -m spec.yaml -o straight <train.csv >/dev/null
    head -n 200 train.csv | sgd-train -q -m spec.yaml -o part >/dev/null
    run -0 sgd-train -q --resume part --skip-seen --threads 1 -o direct <train.csv
    run -0 --separate-stderr ckpt-resume -q --threads 1 part -q --skip-seen -o via <train.csv
    assert_output via
    assert_equal "$stderr" ""
    local f
    for f in model.safetensors optimizer.safetensors state.yaml; do
        run -0 cmp direct/$f via/$f
        run -0 cmp straight/$f via/$f
    done
    # outside a checkpoint root the parent is named by its absolute path
    run -0 grep -x "parent: \"$(realpath part)\"" via/manifest.yaml
}

@test "the options after CKPT reach sgd-train: --ckpt-dir, --ckpt-every" {
    head -n 100 train.csv | sgd-train -q -m spec.yaml -o part >/dev/null
    run -0 --separate-stderr ckpt-resume -q --threads 1 part -q --skip-seen --ckpt-dir ck2 --ckpt-every 1000 <train.csv
    assert_output ck2/step-00000150
    assert_equal "$(readlink ck2/latest)" step-00000150
    [[ ! -e model.ckpt ]] || fail "--ckpt-dir did not reach sgd-train: model.ckpt written"
    assert_equal "$(field ck2/latest/state.yaml records_seen)" 600
}

@test "a damaged checkpoint: exit 1 with the file named, no sgd-train, no --inspect output" {
    train_ckpt ck
    fake_sgd
    flip_byte ck/model.safetensors 100
    run -1 --separate-stderr ckpt-resume ck <train.csv
    assert_output ""
    assert_equal "${#stderr_lines[@]}" 1
    [[ ${stderr_lines[0]} == "ckpt-resume: "*model.safetensors* ]] || fail "$stderr"
    not_run
    run -1 --separate-stderr ckpt-resume --inspect ck
    assert_output ""
    run -1 --separate-stderr ckpt-resume -n ck
    assert_output ""
    not_run
    # a missing file, and a manifest that is not one
    train_ckpt ck3
    rm ck3/state.yaml
    run -1 --separate-stderr ckpt-resume ck3 </dev/null
    [[ $stderr == *state.yaml* ]] || fail "$stderr"
    train_ckpt ck4
    echo 'format: something/2' >ck4/manifest.yaml
    run -1 ckpt-resume ck4 </dev/null
    not_run
}

@test "'-' is an archive on stdin: only with --inspect (exit 2), a missing checkpoint (exit 1)" {
    fake_sgd
    run -2 --separate-stderr ckpt-resume - <train.csv
    assert_output ""
    assert_equal "${stderr_lines[0]#ckpt-resume: -: }" "stdin carries the records to train on; give the archive as a file, or use --inspect"
    run -1 --separate-stderr ckpt-resume nothere </dev/null
    assert_equal "$stderr" "ckpt-resume: nothere: No such file or directory"
    mkdir empty
    run -1 --separate-stderr ckpt-resume -n empty </dev/null
    assert_output ""
    [[ $stderr == *empty* ]] || fail "$stderr"
    not_run
}

@test "a model that cannot fit in memory: refused from the manifest's spec, exit 1, no sgd-train" {
    train_ckpt ck
    fake_sgd
    cp -r ck big
    # 4 inputs, two layers of 200000 units: 4.00018e10 weights.  Only the
    # manifest changes: its spec, the sizes it declares for the files (as
    # that spec allows), its seal; the check comes before any file is read
    local np=40001800003 bytes
    bytes=$((8 + 4 * np + 100))
    sed -i 's/{dense: 8, activation: relu}/{dense: 200000, activation: relu}\n    - {dense: 200000, activation: relu}/' \
        big/manifest.yaml
    manifest_set big/manifest.yaml model.safetensors "$bytes" 0123456789abcdef
    manifest_set big/manifest.yaml optimizer.safetensors "$bytes" 0123456789abcdef
    run -1 --separate-stderr ckpt-resume big <train.csv
    assert_output ""
    assert_equal "${#stderr_lines[@]}" 1
    assert_regex "$stderr" "^ckpt-resume: big: the model \\($np parameters\\) and its training buffers need about [0-9]+ MiB, but only [0-9]+ MiB are available here\$"
    local need
    need=$(sed -E 's/.*need about ([0-9]+) MiB.*/\1/' <<<"$stderr")
    # 6 float buffers of 4e10 (weights, gradients, momentum, twice), in MiB
    assert [ "$need" -ge 915000 ]
    # --inspect hashes the files first: they do not match what it declares
    run -1 --separate-stderr ckpt-resume --inspect big
    assert_regex "$stderr" '^ckpt-resume: big/model\.safetensors: size does not match the manifest'
    run -1 --separate-stderr ckpt-resume -n big
    assert_output ""
    not_run
    # the real checkpoint passes the same check
    run -0 ckpt-resume -n ck
}

@test "an archive: --inspect reads it (also from -), a resume unpacks it into --workdir/NAME" {
    [[ -x $MNN_BIN/ckpt-pack ]] || fail "ckpt-pack is not built"
    head -n 200 train.csv | sgd-train -q -m spec.yaml -o ck >/dev/null
    ckpt-pack ck >ck.tar.zst || fail "ckpt-pack failed"
    run -0 ckpt-resume --inspect ck.tar.zst
    assert_line 'checkpoint: "ck.tar.zst"'
    assert_line 'step: 50'
    assert_line 'parameters: 67'
    local from_file=$output
    run -0 ckpt-resume --inspect - <ck.tar.zst
    assert_line 'checkpoint: "-"'
    assert_equal "$(sed 1d <<<"$output" | grep -v '^  - "')" "$(sed 1d <<<"$from_file" | grep -v '^  - "')"
    [[ ! -e ck.tar.zst.d && ! -e wd ]]
    mkdir wd
    run -0 --separate-stderr ckpt-resume -q --threads 1 -w wd ck.tar.zst -q --skip-seen -o via <train.csv
    assert_output via
    [[ -f wd/ck/manifest.yaml ]] || fail "not unpacked into wd/ck"
    run -0 diff -r ck wd/ck
    run -0 sgd-train -q --resume ck --skip-seen --threads 1 -o direct <train.csv
    run -0 cmp direct/model.safetensors via/model.safetensors
    run -0 grep -x "parent: \"$(realpath wd/ck)\"" via/manifest.yaml
    # wd/NAME exists now: refused
    run -1 ckpt-resume -n -w wd ck.tar.zst
    # sgd-train --resume takes the archive too, unpacked under --workdir
    # into a directory removed at exit
    mkdir tw
    run -0 sgd-train -q --resume ck.tar.zst --workdir tw --skip-seen --threads 1 -o direct2 <train.csv
    run -0 cmp direct/model.safetensors direct2/model.safetensors
    run -0 ls -A tw
    assert_output ""
}

@test "a directory ckpt-ship received into: its latest archive is the checkpoint" {
    [[ -x $MNN_BIN/ckpt-ship ]] || fail "ckpt-ship is not built"
    head -n 200 train.csv | sgd-train -q -m spec.yaml --ckpt-dir ck --ckpt-every 10 >/dev/null
    run -0 ckpt-ship -q ck/step-00000010 ck/latest shipped
    [[ $(readlink shipped/latest) == step-00000050.tar.zst ]] || fail "shipped/latest: $(readlink shipped/latest)"
    run -0 ckpt-resume --inspect shipped
    assert_line 'checkpoint: "shipped/latest"'
    assert_line 'step: 50'
    mkdir wd tw
    run -0 --separate-stderr ckpt-resume -q --threads 1 -w wd shipped -q --skip-seen -o via <train.csv
    run -0 sgd-train -q --resume shipped --workdir tw --skip-seen --threads 1 -o direct <train.csv
    run -0 sgd-train -q --resume ck --skip-seen --threads 1 -o plain <train.csv
    run -0 cmp plain/model.safetensors via/model.safetensors
    run -0 cmp plain/model.safetensors direct/model.safetensors
}

@test "resuming from ck/latest into ck: the parent is the checkpoint resumed, not the moving link" {
    head -n 200 train.csv | sgd-train -q -m spec.yaml --ckpt-dir ck >/dev/null
    assert_equal "$(readlink ck/latest)" step-00000050
    run -0 ckpt-resume -q --threads 1 ck/latest -q --ckpt-dir ck --skip-seen <train.csv
    assert_output ck/step-00000150
    local parent
    parent=$(sed -n 's/^parent: "\(.*\)"$/\1/p' ck/step-00000150/manifest.yaml)
    [[ -n $parent ]] || fail "no parent in ck/step-00000150/manifest.yaml"
    # relative to where it ran, or to the root
    local p=$parent
    [[ -e $p ]] || p=ck/$parent
    assert_equal "$(realpath "$p")" "$(realpath ck/step-00000050)"
}

@test "--inspect follows the lineage across a resume into the same root" {
    stepwise 2 --ckpt-dir ck
    assert_equal "$(readlink ck/latest)" step-00000020
    run -0 ckpt-resume -q --threads 1 ck/latest -q --ckpt-dir ck --skip-seen <train.csv
    assert_output ck/step-00000150
    run -0 ckpt-resume --inspect ck
    local l
    mapfile -t l < <(lineage)
    # ck, its parent (the resumed step-00000020), and that one's parent
    assert_equal "${l[0]}" ck
    assert_equal "${l[-1]##*/}" step-00000010
    assert_equal "${#l[@]}" 3
}

@test "migration: SIGTERM before the first step after resuming into the same root exits 3" {
    head -n 200 train.csv | sgd-train -q -m spec.yaml --ckpt-dir ck >/dev/null
    mkfifo in
    ckpt-resume -q --threads 1 ck/latest --ckpt-dir ck --skip-seen <in >paths 2>err &
    local pid=$! rc=0
    exec 7>in
    # sgd-train prints its table's header once its signal handlers are set
    wait_for_match err 'records' || { kill -9 "$pid"; fail "sgd-train did not start: $(cat err)"; }
    kill -TERM "$pid"
    wait_gone "$pid" || { kill -9 "$pid"; fail "still running after SIGTERM"; }
    wait "$pid" || rc=$?
    exec 7>&-
    assert_equal "$rc" 3 # stopped before the end of its input
    run -0 infer -m ck/latest </dev/null
    assert_equal "$(field ck/latest/state.yaml records_seen)" 200
}

@test "man/ckpt-resume.1 documents every option of --help and the exit status" {
    local page=$MNN_SRC/man/ckpt-resume.1 opt missing=()
    [[ -s $page ]] || fail "man/ckpt-resume.1 is missing or empty"
    run -0 ckpt-resume --help
    for opt in $(grep -oE -- '--[a-z][a-z-]*' <<<"$output" | sort -u); do
        grep -qE -- "Fl -${opt#--}([^a-z-]|\$)" "$page" || missing+=("$opt")
    done
    for opt in $(grep -oE -- '^ +-[a-zA-Z],' <<<"$output" | tr -d ' ,-'); do
        grep -qE -- "Fl ([a-zA-Z]+ )*$opt([^a-zA-Z-]|\$)|Fl [a-zA-Z]*$opt[a-zA-Z]*( |\$)" "$page" ||
            missing+=("-$opt")
    done
    ((${#missing[@]} == 0)) || fail "man/ckpt-resume.1 does not document: ${missing[*]}"
    run -0 grep -x '\.Sh EXIT STATUS' "$page"
    run -0 grep -x '\.Nm ckpt-resume' "$page"
    run -0 grep -E '^\.Xr ckpt-resume 1( |$)' "$MNN_SRC/man/mini-nn.7"
    run -0 grep -E '^\.Xr ckpt-resume 1( |$)' "$MNN_SRC/man/sgd-train.1"
}
