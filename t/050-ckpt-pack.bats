#!/usr/bin/env bats
# 050-ckpt-pack: a checkpoint as one .tar.zst: the same bytes every time,
# round trips that change nothing, --list, --verify, -o, and every kind of
# damaged or hostile archive refused with exit 1, a message, and nothing
# written anywhere.

bats_require_minimum_version 1.5.0
load helpers

setup_file() {
    cd "$BATS_FILE_TMPDIR" || return 1
    mk_spec spec.yaml
    mk_data 600 7 >train.csv
    # a fixed creation time: the checkpoint, hence the archive, is the same
    # on every run, and so is the bit the corruption tests flip
    SOURCE_DATE_EPOCH=1700000000 sgd-train -q -m spec.yaml -o ck <train.csv >/dev/null
    ckpt-pack ck >ck.tar.zst
    # hostile archives, made by python's tarfile and zstd(1)
    if command -v python3 >/dev/null && command -v zstd >/dev/null; then
        mkdir hostile
        craft_archives ck hostile "$BATS_FILE_TMPDIR/abs-x" &&
            for f in hostile/*.tar; do zstd -q --rm "$f" -o "$f.zst" || return 1; done
    fi
}

setup() {
    fixtures
    CK=$BATS_FILE_TMPDIR/ck
    A=$BATS_FILE_TMPDIR/ck.tar.zst
    H=$BATS_FILE_TMPDIR/hostile
    [[ -f $CK/manifest.yaml && -s $A ]] || fail "setup_file could not make $CK and $A"
    mkdir -p box/tgt
}

teardown() {
    if [[ -n ${BG_PID:-} ]]; then kill "$BG_PID" 2>/dev/null || true; fi
}

# craft_archives CKPT OUTDIR ABSPATH: one CASE.tar per hostile case, each a
# copy of CKPT's entries with one thing wrong
craft_archives() {
    python3 - "$@" <<'EOF'
import io, os, sys, tarfile
src, out, absolute = sys.argv[1], sys.argv[2], sys.argv[3]
name = os.path.basename(os.path.normpath(src))
def body(f):
    with open(os.path.join(src, f), 'rb') as fh:
        return fh.read()
def ent(path, data=b'', kind=tarfile.REGTYPE, link=''):
    ti = tarfile.TarInfo(path)
    ti.type, ti.mtime, ti.linkname = kind, 0, link
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
    return ti, data if kind == tarfile.REGTYPE else None
listed = sorted(l.split('name: ')[1].split(',')[0]
                for l in body('manifest.yaml').decode().splitlines()
                if l.startswith('  - {name: '))
head = [ent(name + '/', kind=tarfile.DIRTYPE), ent(name + '/manifest.yaml', body('manifest.yaml'))]
files = [ent(name + '/' + f, body(f)) for f in listed]
m, rest = listed[0], files[1:]
flipped = bytearray(body(m))
flipped[len(flipped) // 2] ^= 1
cases = {
    'good': head + files,
    'dotdot': head + [ent('../../x', b'evil')] + files,
    'dotdot-inside': head + files + [ent(name + '/../../x', b'evil')],
    'absolute': head + [ent(absolute, b'evil')] + files,
    'symlink': head + [ent(name + '/' + m, kind=tarfile.SYMTYPE, link='/etc/passwd')] + rest,
    'hardlink': head + [ent(name + '/' + m, kind=tarfile.LNKTYPE, link=name + '/manifest.yaml')] + rest,
    'device': head + files + [ent(name + '/null', kind=tarfile.CHRTYPE)],
    'fifo': head + [ent(name + '/fifo', kind=tarfile.FIFOTYPE)] + files,
    'unlisted': head + files + [ent(name + '/extra.bin', b'extra')],
    'larger': head + [ent(name + '/' + m, body(m) + b'more')] + rest,
    'altered': head + [ent(name + '/' + m, bytes(flipped))] + rest,
    'manifest-late': [head[0], files[0], head[1]] + rest,
    'no-manifest': [head[0]] + files,
    'missing': head + files[:-1],
    'twice': head + files + [files[0]],
    'outside': head + [ent('other/x', b'x')] + files,
    'subdir': head + [ent(name + '/sub/', kind=tarfile.DIRTYPE)] + files,
    'hidden-name': [ent('.ck/', kind=tarfile.DIRTYPE)],
    'trailing-junk': head + files,
}
for case, entries in cases.items():
    path = os.path.join(out, case + '.tar')
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    if case == 'trailing-junk':
        with open(path, 'ab') as fh:
            fh.write(b'junk after the end-of-archive blocks')
EOF
}

need_hostile() {
    need python3 python3
    need zstd zstd
    [[ -d $H ]] || fail "setup_file could not craft the hostile archives"
}

# snapshot: every path under the test's directory, with its type and size
snapshot() {
    # the size of a file, not of a directory (on tmpfs it counts entries,
    # bats' own among them)
    (cd "$BATS_TEST_TMPDIR" &&
        find . -name 'separate-stderr-*' -prune -o -type d -printf '%p d\n' -o -printf '%p %y %s\n' |
        LC_ALL=C sort)
}

# refused ARCHIVE REGEX: --extract box/tgt and --verify both exit 1 with a
# message matching REGEX, print nothing on stdout, and write nothing at all
# (the target stays empty, no file appears or changes anywhere).
refused() {
    local before after archive
    archive=$(realpath "$1")
    before=$(snapshot)
    cd box || return 1
    run -1 --separate-stderr ckpt-pack --extract tgt "$archive"
    cd .. || return 1
    assert_equal "$output" ""
    assert_regex "$stderr" "^ckpt-pack: .*$2"
    after=$(snapshot)
    assert_equal "$after" "$before"
    run -0 find box/tgt -mindepth 1
    assert_output ""
    [[ ! -e $BATS_FILE_TMPDIR/abs-x ]] || fail "$1 wrote $BATS_FILE_TMPDIR/abs-x"
    run -1 --separate-stderr ckpt-pack --verify "$1"
    assert_regex "$stderr" "^ckpt-pack: .*$2"
}

# flip_bit FILE OFFSET: inverts the lowest bit of the byte at OFFSET
flip_bit() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    # shellcheck disable=SC2059
    printf "\\$(printf '%03o' $((b ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# ---- the command line -----------------------------------------------------------

@test "--help on stdout, exit 0; --version" {
    run -0 --separate-stderr ckpt-pack --help
    assert_line --index 0 "Usage: ckpt-pack [OPTION]... CKPT"
    assert_output --partial "Exit status: 0 success, 1 data or runtime error, 2 usage error"
    assert_equal "$stderr" ""
    run -0 --separate-stderr ckpt-pack --version
    assert_output "ckpt-pack (mini-nn) 0.1.0"
}

@test "usage errors: exit 2 with a hint, nothing on stdout" {
    local args
    for args in "" "ck ck" "--list --verify x" "--list --extract d x" "--level 0 ck" \
        "--level 20 ck" "--threads 0 ck" "--threads x ck" "-o f --list x" "--level 3 --verify x" \
        "--no-such-option ck" "--extract"; do
        # shellcheck disable=SC2086
        run -2 --separate-stderr ckpt-pack $args
        assert_equal "$output" ""
        assert_regex "$stderr" "Try 'ckpt-pack --help' for more information"
    done
}

@test "the man page documents every option of --help and lints clean" {
    local page=$MNN_SRC/man/ckpt-pack.1 opt missing=()
    run -0 ckpt-pack --help
    for opt in $(grep -oE -- '--[a-z][a-z-]*' <<<"$output" | sort -u); do
        grep -qE -- "Fl -${opt#--}([^a-z-]|\$)" "$page" || missing+=("$opt")
    done
    ((${#missing[@]} == 0)) || fail "man/ckpt-pack.1 does not document: ${missing[*]}"
    [[ $MANDOC != no ]] || fail "mandoc is not installed (Debian package mandoc)"
    run -0 bash -c "'$MANDOC' -Tlint -Wstyle '$page' 2>&1 | grep -v 'referenced manual not found' || true"
    assert_output ""
}

# ---- packing --------------------------------------------------------------------

@test "same checkpoint, same bytes: twice, and from a later cp -r copy" {
    ckpt-pack "$CK" >a.tar.zst
    ckpt-pack "$CK" >b.tar.zst
    cmp a.tar.zst b.tar.zst
    cmp a.tar.zst "$A"
    # a copy with other times, modes and (if root) owner
    mkdir copy
    cp -r "$CK" copy/ck
    touch -d '2001-02-03 04:05:06' copy/ck/*
    chmod 600 copy/ck/state.yaml
    chown 1:1 copy/ck/model.safetensors 2>/dev/null || true
    ckpt-pack copy/ck >c.tar.zst
    cmp a.tar.zst c.tar.zst
}

@test "entries: NAME/, manifest, files by name; root:root, 0755/0644, mtime = created" {
    run -0 --separate-stderr ckpt-pack --list "$A"
    local f expected
    expected=$(printf 'd\t0\tck/\n')
    for f in manifest.yaml model.safetensors optimizer.safetensors state.yaml; do
        expected+=$(printf '\nf\t%s\tck/%s' "$(stat -c %s "$CK/$f")" "$f")
    done
    assert_output "$expected"
    grep -qx 'created: 2023-11-14T22:13:20Z' "$CK/manifest.yaml" ||
        fail "the fixture's created time is not SOURCE_DATE_EPOCH"
    need zstd zstd
    zstd -dc "$A" >ck.tar
    run -0 tar --numeric-owner --full-time -tvf ck.tar
    assert_line --index 0 --regexp '^drwxr-xr-x 0/0 +0 2023-11-14 22:13:20 ck/$'
    assert_line --index 1 --regexp '^-rw-r--r-- 0/0 +[0-9]+ 2023-11-14 22:13:20 ck/manifest.yaml$'
    assert_equal "${#lines[@]}" 5
    run -0 tar -tvf ck.tar
    assert_line --index 2 --regexp '^-rw-r--r-- root/root '
    # plain ustar headers, no pax extended headers: one 512-byte header per
    # entry, the data padded to 512, two zero blocks at the end
    local size=$((512 + 1024))
    for f in manifest.yaml model.safetensors optimizer.safetensors state.yaml; do
        size=$((size + 512 + ($(stat -c %s "$CK/$f") + 511) / 512 * 512))
    done
    assert_equal "$(stat -c %s ck.tar)" "$size"
    run -0 grep -c 'ustar' ck.tar
}

@test "a checkpoint root packs its latest checkpoint, named by its own name" {
    mkdir root
    cp -r "$CK" root/step-00000150
    ln -s step-00000150 root/latest
    ckpt-pack root >r.tar.zst
    run -0 ckpt-pack --list r.tar.zst
    assert_line --index 0 "$(printf 'd\t0\tstep-00000150/')"
}

@test "an archive, and a directory ckpt-ship received into, pack again to the same bytes" {
    run -0 --separate-stderr ckpt-pack "$A"
    ckpt-pack "$A" >again.tar.zst
    cmp again.tar.zst "$A"
    mkdir recv
    cp "$A" recv/step-00000150.tar.zst
    ln -s step-00000150.tar.zst recv/latest
    ckpt-pack recv >recv.tar.zst
    cmp recv.tar.zst "$A"
    run -0 --separate-stderr ckpt-pack --verify recv
    assert_equal "$stderr" "ckpt-pack: recv/latest: ok"
    # a damaged one is refused, nothing written
    head -c 500 "$A" >cut.tar.zst
    run -1 --separate-stderr ckpt-pack -o out.tar.zst cut.tar.zst
    assert_regex "$stderr" '^ckpt-pack: cut\.tar\.zst'
    [[ ! -e out.tar.zst ]] || fail "out.tar.zst was written"
}

@test "-o FILE: the same bytes as stdout, no temporary file left, replaces FILE" {
    echo old >out.tar.zst
    run -0 --separate-stderr ckpt-pack -o out.tar.zst "$CK"
    assert_equal "$output$stderr" ""
    cmp out.tar.zst "$A"
    run -0 find . -name '*.tmp-*'
    assert_output ""
    ckpt-pack -o - "$CK" >dash.tar.zst
    cmp dash.tar.zst "$A"
}

@test "--level and --threads: other bytes maybe, the same checkpoint back" {
    ckpt-pack --level 19 "$CK" >l19.tar.zst
    ckpt-pack --threads 1 "$CK" >t1.tar.zst
    ckpt-pack --threads 4 "$CK" >t4.tar.zst
    cmp t1.tar.zst t4.tar.zst
    for f in l19 t4; do
        run -0 ckpt-pack --extract box/tgt "$f.tar.zst"
        diff -r "$CK" box/tgt/ck
        rm -r box/tgt/ck
    done
}

@test "refuses to write an archive to a terminal, or to read one from it" {
    need script bsdutils
    run -1 script -qec "ckpt-pack '$CK'" /dev/null
    assert_output --partial "ckpt-pack: refusing to write an archive to a terminal"
    run -1 script -qec "ckpt-pack --verify -" /dev/null
    assert_output --partial "ckpt-pack: refusing to read an archive from a terminal"
}

@test "write error on stdout: exit 1 with a message" {
    run -1 --separate-stderr to_full ckpt-pack "$CK"
    assert_regex "$stderr" '^ckpt-pack: cannot write the archive: No space left on device'
}

@test "pack refuses a checkpoint that does not match its manifest; -o leaves nothing" {
    local m
    cp -r "$CK" bad
    m=$(stat -c %s bad/model.safetensors)
    flip_bit bad/model.safetensors $((m / 2))
    run -1 --separate-stderr ckpt-pack bad
    assert_regex "$stderr" '^ckpt-pack: bad/model.safetensors: hash does not match the manifest'
    run -1 --separate-stderr ckpt-pack -o bad.tar.zst bad
    assert_regex "$stderr" 'hash does not match the manifest'
    run -0 find . -name '*bad.tar.zst*'
    assert_output ""
    # one byte more, and a file gone
    cp "$CK/model.safetensors" bad/
    echo >>bad/state.yaml
    run -1 --separate-stderr ckpt-pack bad
    assert_regex "$stderr" '^ckpt-pack: bad/state.yaml: [0-9]+ bytes, the manifest says [0-9]+$'
    rm bad/state.yaml
    run -1 --separate-stderr ckpt-pack bad
    assert_regex "$stderr" '^ckpt-pack: bad/state.yaml: listed in the manifest but missing$'
}

@test "a hidden checkpoint name cannot be packed" {
    cp -r "$CK" .hidden
    run -1 --separate-stderr ckpt-pack .hidden
    assert_regex "$stderr" "'.hidden' cannot name a packed checkpoint"
}

# ---- reading back -----------------------------------------------------------------

@test "round trip: identical files, identical predictions, path on stdout" {
    run -0 --separate-stderr ckpt-pack --extract box/tgt "$A"
    assert_output "box/tgt/ck"
    assert_equal "$stderr" ""
    diff -r "$CK" box/tgt/ck
    run -0 find box -name '.tmp-*'
    assert_output ""
    infer -m "$CK" --proba <test.csv >orig.txt
    infer -m box/tgt/ck --proba <test.csv >back.txt
    cmp orig.txt back.txt
    # the extracted checkpoint packs to the same bytes again
    ckpt-pack box/tgt/ck | cmp - "$A"
}

@test "--extract from stdin; an existing target is refused and left alone" {
    run -0 --separate-stderr ckpt-pack --extract box/tgt - <"$A"
    assert_output "box/tgt/ck"
    echo mine >box/tgt/ck/mine
    run -1 --separate-stderr ckpt-pack --extract box/tgt - <"$A"
    assert_regex "$stderr" '^ckpt-pack: box/tgt/ck: already exists$'
    assert_equal "$(cat box/tgt/ck/mine)" mine
    run -0 find box/tgt -name '.tmp-*'
    assert_output ""
    # the target directory must exist
    run -1 --separate-stderr ckpt-pack --extract nowhere "$A"
    assert_regex "$stderr" '^ckpt-pack: nowhere: No such file or directory$'
}

@test "a stale temporary directory is replaced" {
    mkdir box/tgt/.tmp-ck
    echo stale >box/tgt/.tmp-ck/model.safetensors
    run -0 --separate-stderr ckpt-pack --extract box/tgt "$A"
    diff -r "$CK" box/tgt/ck
    [[ ! -e box/tgt/.tmp-ck ]] || fail "the stale temporary directory is still there"
}

@test "--verify: an archive, stdin, a directory; -q is silent" {
    run -0 --separate-stderr ckpt-pack --verify "$A"
    assert_equal "$output" ""
    assert_equal "$stderr" "ckpt-pack: $A: ok"
    run -0 --separate-stderr ckpt-pack --verify - <"$A"
    assert_equal "$stderr" "ckpt-pack: stdin: ok"
    run -0 --separate-stderr ckpt-pack --verify "$CK"
    assert_equal "$stderr" "ckpt-pack: $CK: ok"
    run -0 --separate-stderr ckpt-pack -q --verify "$A"
    assert_equal "$output$stderr" ""
    run -0 --separate-stderr ckpt-pack -v --verify "$A"
    assert_regex "$stderr" ': ok \(step 150, 600 records seen, created 2023-11-14T22:13:20Z, 3 files, [0-9]+ bytes\)$'
    # a directory that does not match its manifest
    cp -r "$CK" bad
    echo >>bad/state.yaml
    run -1 --separate-stderr ckpt-pack --verify bad
    assert_regex "$stderr" '^ckpt-pack: bad/state.yaml: size does not match the manifest'
}

@test "not an archive: a plain tar, a directory, text, empty input" {
    need zstd zstd
    zstd -dc "$A" >plain.tar
    run -1 --separate-stderr ckpt-pack --verify plain.tar
    assert_regex "$stderr" '^ckpt-pack: plain.tar: not zstd-compressed'
    run -1 --separate-stderr ckpt-pack --extract box/tgt "$CK"
    assert_regex "$stderr" 'is a directory'
    run -1 --separate-stderr ckpt-pack --list - <spec.yaml
    assert_regex "$stderr" '^ckpt-pack: stdin: not zstd-compressed'
    run -1 --separate-stderr ckpt-pack --extract box/tgt - </dev/null
    assert_regex "$stderr" '^ckpt-pack: stdin: empty input'
    printf 'hello\n' | zstd -q >text.zst
    run -1 --separate-stderr ckpt-pack --verify text.zst
    assert_regex "$stderr" 'no tar archive inside the zstd stream'
}

# ---- damaged archives ---------------------------------------------------------------

@test "truncated archive: exit 1, 'truncated', nothing written" {
    local n len
    n=$(stat -c %s "$A")
    for len in 2 10 $((n / 2)) $((n - 1)); do
        head -c "$len" "$A" >cut.tar.zst
        refused cut.tar.zst 'cut.tar.zst: .*(truncated|Truncated)'
        # --list reads the whole stream too
        run -1 --separate-stderr ckpt-pack --list cut.tar.zst
        assert_regex "$stderr" 'cut.tar.zst: .*(truncated|Truncated)'
    done
}

@test "one flipped bit anywhere in the middle: exit 1, nothing written" {
    local n off
    n=$(stat -c %s "$A")
    for off in $((n / 4)) $((n / 3)) $((n / 2)) $((2 * n / 3)) $((3 * n / 4)); do
        cp "$A" flip.tar.zst
        flip_bit flip.tar.zst "$off"
        refused flip.tar.zst 'flip.tar.zst'
    done
    cp "$A" flip.tar.zst
    flip_bit flip.tar.zst $((n / 2))
    run -1 --separate-stderr ckpt-pack --verify flip.tar.zst
    assert_regex "$stderr" 'damaged|hash does not match|invalid YAML|does not match'
}

@test "trailing garbage after the zstd frame, and a second archive after the first" {
    { cat "$A"; echo garbage; } >g.tar.zst
    refused g.tar.zst 'g.tar.zst: damaged, truncated or empty zstd stream: .*Unknown frame descriptor'
    cat "$A" "$A" >gg.tar.zst
    refused gg.tar.zst 'gg.tar.zst: data after the end of the tar archive$'
    run -1 --separate-stderr ckpt-pack --list gg.tar.zst
    assert_regex "$stderr" 'gg.tar.zst: data after the end of the tar archive$'
}

# ---- hostile archives -----------------------------------------------------------------

@test "a python-made archive of the checkpoint is accepted" {
    need_hostile
    run -0 ckpt-pack --extract box/tgt "$H/good.tar.zst"
    diff -r "$CK" box/tgt/ck
}

@test "paths: ../../x, NAME/../../x, an absolute path, outside NAME/" {
    need_hostile
    refused "$H/dotdot.tar.zst" "dotdot.tar.zst: \.\./\.\./x: '\.\.' in a path refused$"
    refused "$H/dotdot-inside.tar.zst" "ck/\.\./\.\./x: '\.\.' in a path refused$"
    refused "$H/absolute.tar.zst" "absolute.tar.zst: /.*/abs-x: absolute path refused$"
    refused "$H/outside.tar.zst" 'other/x: outside ck/, refused$'
    refused "$H/hidden-name.tar.zst" '\.ck/: the first entry must be NAME/ or NAME/manifest\.yaml'
}

@test "types: symlink, hard link, device, fifo, subdirectory" {
    need_hostile
    refused "$H/symlink.tar.zst" 'ck/model.safetensors: symbolic link refused$'
    refused "$H/hardlink.tar.zst" 'ck/model.safetensors: hard link refused$'
    refused "$H/device.tar.zst" 'ck/null: device refused$'
    refused "$H/fifo.tar.zst" 'ck/fifo: fifo refused$'
    refused "$H/subdir.tar.zst" 'ck/sub/: a directory inside ck/, refused$'
}

@test "against the manifest: unlisted, larger, altered, twice, missing, manifest late or absent" {
    need_hostile
    refused "$H/unlisted.tar.zst" 'ck/extra.bin: not listed in the manifest, refused$'
    refused "$H/larger.tar.zst" 'ck/model.safetensors: [0-9]+ bytes, more than the [0-9]+ the manifest says, refused$'
    refused "$H/altered.tar.zst" 'ck/model.safetensors: hash does not match the manifest'
    refused "$H/twice.tar.zst" 'ck/model.safetensors: appears twice, refused$'
    refused "$H/missing.tar.zst" 'ck/state.yaml: listed in the manifest but missing$'
    refused "$H/manifest-late.tar.zst" 'ck/model.safetensors: before ck/manifest.yaml, which must come first$'
    refused "$H/no-manifest.tar.zst" 'ck/model.safetensors: before ck/manifest.yaml, which must come first$'
    refused "$H/trailing-junk.tar.zst" 'data after the end of the tar archive$'
}

@test "--list shows hostile entries as they are" {
    need_hostile
    run -0 --separate-stderr ckpt-pack --list "$H/symlink.tar.zst"
    assert_line --index 2 "$(printf 'l\t0\tck/model.safetensors')"
    run -0 --separate-stderr ckpt-pack --list "$H/dotdot.tar.zst"
    assert_line --index 2 "$(printf 'f\t4\t../../x')"
    run -0 --separate-stderr ckpt-pack --list "$H/fifo.tar.zst"
    assert_line --index 2 "$(printf '?\t0\tck/fifo')"
}

# ---- signals ----------------------------------------------------------------------------

@test "SIGTERM while -o FILE is written: the temporary file removed, FILE untouched" {
    # a few million parameters at level 19: seconds of packing
    mk_spec big.yaml
    sed -i 's/dense: 8,/dense: 600000,/' big.yaml
    head -8 train.csv | SOURCE_DATE_EPOCH=1700000000 sgd-train -q -m big.yaml -o bigck >/dev/null
    echo old >out.tar.zst
    ckpt-pack --level 19 -o out.tar.zst bigck 2>err.txt &
    BG_PID=$!
    local n=200
    until compgen -G '.out.tar.zst.tmp-*' >/dev/null; do
        [[ -d /proc/$BG_PID ]] || fail "ckpt-pack ended before its temporary file was seen: $(cat err.txt)"
        ((n-- > 0)) || fail "no temporary file appeared: $(cat err.txt)"
        sleep 0.05
    done
    kill -TERM "$BG_PID"
    bg_exit 143 # died of SIGTERM
    run -0 find . -maxdepth 1 -name '*out.tar.zst*'
    assert_output "./out.tar.zst"
    assert_equal "$(cat out.tar.zst)" "old"
}

@test "SIGTERM while --extract waits for input: temporary directory removed" {
    # a checkpoint of a few zstd blocks, so that extraction starts before
    # the input stalls
    mk_spec big.yaml
    sed -i 's/dense: 8,/dense: 20000,/' big.yaml
    head -40 train.csv | SOURCE_DATE_EPOCH=1700000000 sgd-train -q -m big.yaml -o bigck >/dev/null
    ckpt-pack bigck >big.tar.zst
    mkfifo in.fifo
    # a writer that stays: the reader waits instead of seeing EOF
    local hold
    exec {hold}<>in.fifo
    ckpt-pack --extract box/tgt in.fifo 2>err.txt 3>&- &
    BG_PID=$!
    head -c 300000 big.tar.zst >in.fifo
    local n=100
    until [[ -d box/tgt/.tmp-bigck ]]; do
        ((n-- > 0)) || fail "no temporary directory appeared: $(cat err.txt)"
        sleep 0.1
    done
    kill -TERM "$BG_PID"
    n=100
    until [[ $(ps -o stat= -p "$BG_PID") != [^Z]* ]]; do
        ((n-- > 0)) || fail "ckpt-pack did not stop on SIGTERM"
        sleep 0.1
    done
    exec {hold}>&-
    bg_exit 143 # died of SIGTERM
    run -0 find box/tgt -mindepth 1
    assert_output ""
}
