#!/usr/bin/env bats
# 080-ckpt-ship: checkpoints shipped to a local directory and, through a
# private sshd on 127.0.0.1 (share/mini-nn/bench/sshd-loopback), to a
# "remote" one: the same bytes as ckpt-pack (its default level, 3), published whole and
# never over another file, resumed after a killed connection, refused when
# corrupted in transit, a full disk and a receiver killed before its
# acknowledgement survived, a training moved to another machine bit for bit,
# and no name, however odd, able to run a command or land anywhere else.

bats_require_minimum_version 1.5.0
load helpers

LOOPBACK=$MNN_SRC/share/mini-nn/bench/sshd-loopback
SSHD=/usr/sbin/sshd

setup_file() {
    cd "$BATS_FILE_TMPDIR" || return 1
    mk_spec spec.yaml
    mk_data 600 7 >train.csv
    mkdir cks mid arch
    # three small checkpoints, step 10, 20 and 30, and a root whose latest
    # is step 30; a fixed creation time keeps every archive the same
    local n d
    for n in 10 20 30; do
        d=cks/$(printf 'step-%08d' "$n")
        head -n $((n * 4)) train.csv |
            SOURCE_DATE_EPOCH=1700000000 sgd-train -q -m spec.yaml -o "$d" >/dev/null || return 1
    done
    mkdir root
    cp -r cks/step-00000030 root/
    ln -s step-00000030 root/latest
    # a larger one (about 240 KB packed) for the transfers that are cut short
    mk_spec mid.yaml
    sed -i 's/dense: 8,/dense: 4000,/' mid.yaml
    head -n 160 train.csv |
        SOURCE_DATE_EPOCH=1700000000 sgd-train -q -m mid.yaml -o mid/step-00000040 >/dev/null || return 1
    # what ckpt-ship must deliver: the archive ckpt-pack makes at its default level
    for d in cks/step-00000010 cks/step-00000020 cks/step-00000030 mid/step-00000040; do
        ckpt-pack "$d" >"arch/${d##*/}.tar.zst" || return 1
    done
    # the sshd, when there is one
    export SSH_DIR=$BATS_FILE_TMPDIR/sshd
    if [[ -x $SSHD ]]; then
        "$LOOPBACK" start "$SSH_DIR" >/dev/null 2>sshd-start.err || true
    fi
}

teardown_file() {
    if [[ -e $SSH_DIR/sshd.pid ]]; then "$LOOPBACK" stop "$SSH_DIR" || true; fi
}

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    F=$BATS_FILE_TMPDIR
    C10=$F/cks/step-00000010 C20=$F/cks/step-00000020 C30=$F/cks/step-00000030
    MID=$F/mid/step-00000040
    A10=$F/arch/step-00000010.tar.zst A20=$F/arch/step-00000020.tar.zst
    A30=$F/arch/step-00000030.tar.zst AMID=$F/arch/step-00000040.tar.zst
    [[ -s $A10 && -s $AMID ]] || fail "setup_file could not make the fixture archives"
    [[ -x $MNN_BIN/ckpt-ship ]] || fail "$MNN_BIN/ckpt-ship is not built"
    # a fake login directory, where a command injected into a remote command
    # line would create its files
    mkdir -p home
    BG_PID=
    PWNED=pwned$BATS_ROOT_PID
}

teardown() {
    if [[ -n ${BG_PID:-} ]]; then kill "$BG_PID" 2>/dev/null || true; fi
    # the stand-in for an ssh that never answers, if ckpt-ship left it
    local p
    p=$(cat "$BATS_TEST_TMPDIR/hang.pid" 2>/dev/null) || true
    if [[ -n $p && $(cat "/proc/$p/comm" 2>/dev/null) == sleep ]]; then kill "$p" || true; fi
    rm -f "$HOME/$PWNED"* 2>/dev/null || true
}

# ---- helpers ------------------------------------------------------------------

# need_sshd: fail without an sshd, or if the one there did not start.
# Sets RSH (the -e command) and RP (the --receive-path).
need_sshd() {
    [[ -x $SSHD ]] || fail "$SSHD is not installed (Debian's openssh-server; ./quickstart check installs it)"
    [[ -s $SSH_DIR/port ]] ||
        fail "sshd-loopback could not start sshd: $(cat "$BATS_FILE_TMPDIR/sshd-start.err" 2>/dev/null)"
    RSH="ssh -F $(printf %q "$SSH_DIR/ssh_config")"
    RP=$(printf %q "$MNN_BIN/ckpt-ship")
}

# ship_ssh ARG...: ckpt-ship through the loopback sshd
ship_ssh() {
    ckpt-ship -e "$RSH" --receive-path "$RP" "$@"
}

# parts DIR: the partial files in DIR, one per line
parts() {
    find "$1" -maxdepth 1 -name '.ckpt-ship-*' -printf '%f\n'
}

# published DIR: the names in DIR that are not hidden, sorted, one a line
published() {
    (cd "$1" && find . -mindepth 1 -maxdepth 1 ! -name '.*' -printf '%f\n' | LC_ALL=C sort)
}

# no_stray: no command injected into a command line has run: no file named
# $PWNED and one character, anywhere under the test's directory (the fake
# login directory included) or in the real login directory
no_stray() {
    local f
    f=$(find "$BATS_TEST_TMPDIR" "$HOME" -maxdepth 1 -name "$PWNED?" 2>/dev/null
        find "$BATS_TEST_TMPDIR" -mindepth 2 -name "$PWNED?")
    [[ -z $f ]] || fail "an injected command ran: $f exists"
}

# fake_rsh: ./fake-rsh stands in for ssh: it writes its arguments to
# ./rsh-argv (NUL-terminated), then runs the remote command as sshd would,
# joined with spaces, by sh -c in the login directory ./home.
fake_rsh() {
    cat >fake-rsh <<EOF
#!/bin/sh
printf '%s\0' "\$@" >"$BATS_TEST_TMPDIR/rsh-argv"
shift
cd "$BATS_TEST_TMPDIR/home" || exit 255
exec sh -c "\$*"
EOF
    chmod +x fake-rsh
    FAKE=$BATS_TEST_TMPDIR/fake-rsh
}

# rsh_arg N: the Nth argument (0: the host) the fake or wrapper rsh got
rsh_arg() {
    local -a a
    mapfile -d '' a <"$BATS_TEST_TMPDIR/rsh-argv"
    printf '%s' "${a[$1]}"
}

# an odd name (short enough for NAME_MAX with a suffix): spaces, both
# quotes, $(...), backquotes, ;, &, a newline, a backslash, a glob, %XX, a
# leading ~; each command, if it ran, would create a file $PWNED<digit> in
# the current directory
odd_name() {
    printf '%s' "~ 'q' \"d\" \$(touch ${PWNED}1) \`touch ${PWNED}2\`;touch ${PWNED}3;"
    printf '%s' "';touch ${PWNED}4;'\";touch ${PWNED}5;\"&touch ${PWNED}6"
    printf '%s' $' \\ * ? %41\n;touch '"${PWNED}7"
}

# ---- the command line -----------------------------------------------------------

@test "--help on stdout, exit 0; --version" {
    run -0 --separate-stderr ckpt-ship --help
    assert_line --index 0 --partial "Usage: ckpt-ship [OPTION]..."
    assert_output --partial "--receive-path"
    assert_output --partial "--files-from"
    assert_output --regexp "Exit status: 0 .*1 .*2 usage error"
    assert_equal "$stderr" ""
    run -0 --separate-stderr ckpt-ship -h
    assert_line --index 0 --partial "Usage: ckpt-ship"
    run -0 --separate-stderr ckpt-ship --version
    assert_output "ckpt-ship (mini-nn) 0.1.0"
    run -0 --separate-stderr ckpt-ship -V
    assert_output "ckpt-ship (mini-nn) 0.1.0"
}

@test "usage errors: exit 2 with a hint, nothing on stdout, nothing written" {
    local args
    mkdir d
    for args in "" "$C10" "--files-from=- $C10 d" "--files-from=- --name n.tar.zst d" \
        "--name n.tar.zst $C10 $C20 d" "--level 0 $C10 d" "--level 20 $C10 d" \
        "--level x $C10 d" "--keep x $C10 d" "--keep -1 $C10 d" "--keep +1 $C10 d" \
        "--retries x $C10 d" "--retries -1 $C10 d" "--timeout x $C10 d" "--timeout -1 $C10 d" \
        "--bwlimit x $C10 d" "--bwlimit 1Q $C10 d" "--bwlimit -5 $C10 d" \
        "--no-such-option $C10 d" "-e" "$C10 d --receive-path" "--receive" \
        "--receive d e"; do
        # shellcheck disable=SC2086
        run -2 --separate-stderr ckpt-ship $args
        assert_equal "$output" ""
        assert_regex "$stderr" "Try 'ckpt-ship --help' for more information"
    done
    run -0 find d -mindepth 1
    assert_output ""
}

# ---- shipping to a local directory -----------------------------------------------

@test "an archive: shipped as it is under its base name, DIR/NAME on stdout, nothing else" {
    cp "$A10" my.tar.zst
    run -0 --separate-stderr ckpt-ship my.tar.zst dst
    assert_output "dst/my.tar.zst"
    assert_equal "$stderr" ""
    cmp my.tar.zst dst/my.tar.zst
    # not a step-N name: no latest link
    [[ ! -e dst/latest && ! -L dst/latest ]] || fail "latest made for my.tar.zst"
    run -0 parts dst
    assert_output ""
    # recognised by its contents, not its name
    cp "$A20" no-suffix
    run -0 --separate-stderr ckpt-ship no-suffix dst
    assert_output "dst/no-suffix"
    cmp "$A20" dst/no-suffix
}

@test "a checkpoint directory: packed as ckpt-pack packs it, as NAME.tar.zst, latest points at it" {
    run -0 --separate-stderr ckpt-ship "$C10" dst
    assert_output "dst/step-00000010.tar.zst"
    assert_equal "$stderr" ""
    cmp "$A10" dst/step-00000010.tar.zst
    assert_equal "$(readlink dst/latest)" step-00000010.tar.zst
    run -0 published dst
    assert_output $'latest\nstep-00000010.tar.zst'
    run -0 parts dst
    assert_output ""
    # the archive holds the checkpoint, whole
    run -0 ckpt-pack --extract . dst/step-00000010.tar.zst
    diff -r "$C10" step-00000010
    # a checkpoint root ships what its latest names, as does root/latest
    run -0 --separate-stderr ckpt-ship "$F/root" dst
    assert_output "dst/step-00000030.tar.zst"
    cmp "$A30" dst/step-00000030.tar.zst
    run -0 --separate-stderr ckpt-ship "$F/root/latest" dst2
    assert_output "dst2/step-00000030.tar.zst"
    cmp "$A30" dst2/step-00000030.tar.zst
    assert_equal "$(readlink dst/latest)" step-00000030.tar.zst
    # --level: other bytes, the same checkpoint
    run -0 --separate-stderr ckpt-ship --level 19 "$C10" dst3
    ckpt-pack --level 19 "$C10" | cmp - dst3/step-00000010.tar.zst
}

@test "a directory ckpt-ship received into ships on as the archive its latest names (a relay)" {
    ckpt-ship "$A10" "$A20" hop1 >/dev/null
    run -0 --separate-stderr ckpt-ship hop1 hop2
    assert_output "hop2/step-00000020.tar.zst"
    cmp hop2/step-00000020.tar.zst "$A20"
    assert_equal "$(readlink hop2/latest)" "step-00000020.tar.zst"
    # a root whose latest names a directory is still packed as before
    run -1 --separate-stderr ckpt-ship "$BATS_TEST_TMPDIR" hop3
    assert_regex "$stderr" 'not a checkpoint'
}

@test "several SRC in one run, in order; -v reports what was sent" {
    run -0 --separate-stderr ckpt-ship -v "$C10" "$A20" "$F/root" dst
    assert_output $'dst/step-00000010.tar.zst\ndst/step-00000020.tar.zst\ndst/step-00000030.tar.zst'
    cmp "$A10" dst/step-00000010.tar.zst
    cmp "$A20" dst/step-00000020.tar.zst
    cmp "$A30" dst/step-00000030.tar.zst
    assert_regex "$stderr" "ckpt-ship: step-00000010.tar.zst: sent $(stat -c %s "$A10") bytes in [0-9.]+ s \([0-9.]+ MiB/s\)"
    assert_regex "$stderr" "ckpt-ship: step-00000030.tar.zst: sent $(stat -c %s "$A30") bytes in "
    assert_equal "$(readlink dst/latest)" step-00000030.tar.zst
}

@test "'-': an archive on stdin, named by its top directory or by --name" {
    run -0 --separate-stderr ckpt-ship - dst <"$A10"
    assert_output "dst/step-00000010.tar.zst"
    cmp "$A10" dst/step-00000010.tar.zst
    assert_equal "$(readlink dst/latest)" step-00000010.tar.zst
    # through a pipe, of unknown size
    run -0 --separate-stderr bash -c "cat '$A20' | ckpt-ship --name other.tar.zst - dst"
    assert_output "dst/other.tar.zst"
    cmp "$A20" dst/other.tar.zst
    assert_equal "$(readlink dst/latest)" step-00000010.tar.zst
    run -0 parts dst
    assert_output ""
    # not an archive: nothing published
    run -1 --separate-stderr ckpt-ship - dst2 <"$F/spec.yaml"
    assert_equal "$output" ""
    [[ -n $stderr ]] || fail "no message"
    if [[ -d dst2 ]]; then
        run -0 published dst2
        assert_output ""
    fi
}

@test "--files-from: several checkpoints, each as its line arrives, latest the highest step" {
    printf '%s\n' "$C20" "$A10" "$F/root" >list
    run -0 --separate-stderr ckpt-ship --files-from=list dst
    assert_output $'dst/step-00000020.tar.zst\ndst/step-00000010.tar.zst\ndst/step-00000030.tar.zst'
    cmp "$A10" dst/step-00000010.tar.zst
    cmp "$A20" dst/step-00000020.tar.zst
    cmp "$A30" dst/step-00000030.tar.zst
    assert_equal "$(readlink dst/latest)" step-00000030.tar.zst
    # from stdin, with --files-from -
    run -0 --separate-stderr ckpt-ship --files-from - dst2 <list
    assert_equal "${#lines[@]}" 3
    # the first one is shipped before the second line is written
    mkfifo paths
    exec 7<>paths
    ckpt-ship --files-from=paths dst3 </dev/null >out 2>err 7>&- &
    BG_PID=$!
    echo "$C10" >&7
    wait_for_match out 'step-00000010\.tar\.zst$' ||
        fail "the first checkpoint was not shipped while the list was open: $(cat err)"
    cmp "$A10" dst3/step-00000010.tar.zst
    echo "$C20" >&7
    wait_for_match out 'step-00000020\.tar\.zst$' || fail "the second was not shipped: $(cat err)"
    exec 7>&-
    bg_exit 0
    run -0 cat out
    assert_output $'dst3/step-00000010.tar.zst\ndst3/step-00000020.tar.zst'
}

@test "shipping again: success with nothing sent; other bytes under the name: exit 1, not overwritten" {
    run -0 ckpt-ship "$C10" dst
    local before
    before=$(stat -c '%i %s %Y' dst/step-00000010.tar.zst)
    run -0 --separate-stderr ckpt-ship -v "$C10" dst
    assert_output "dst/step-00000010.tar.zst"
    assert_regex "$stderr" 'ckpt-ship: step-00000010.tar.zst: already there'
    refute_regex "$stderr" 'sent [0-9]+ bytes'
    assert_equal "$(stat -c '%i %s %Y' dst/step-00000010.tar.zst)" "$before"
    # the archive itself is the same bytes
    run -0 --separate-stderr ckpt-ship "$A10" dst
    assert_output "dst/step-00000010.tar.zst"
    # level 19: other bytes under the same name
    ckpt-pack --level 19 "$C10" >l19.tar.zst
    ! cmp -s l19.tar.zst "$A10" || fail "level 19 made the same bytes: the test proves nothing"
    run -1 --separate-stderr ckpt-ship --level 19 "$C10" dst
    assert_equal "$output" ""
    assert_regex "$stderr" 'step-00000010.tar.zst: .*exists with other contents; not overwritten'
    cmp "$A10" dst/step-00000010.tar.zst
    assert_equal "$(stat -c '%i %s %Y' dst/step-00000010.tar.zst)" "$before"
    run -1 --separate-stderr ckpt-ship --name step-00000010.tar.zst "$A20" dst
    assert_regex "$stderr" 'exists with other contents; not overwritten'
    cmp "$A10" dst/step-00000010.tar.zst
    # a file that is not an archive, in the way: the same
    echo mine >dst/step-00000020.tar.zst
    run -1 --separate-stderr ckpt-ship "$C20" dst
    assert_regex "$stderr" 'exists with other contents; not overwritten'
    assert_equal "$(cat dst/step-00000020.tar.zst)" mine
    run -0 parts dst
    assert_output ""
}

@test "--keep N: the newest N step archives by step, other names kept, latest the newest" {
    mkdir dst
    cp "$A10" dst/other.tar.zst
    echo notes >dst/notes.txt
    printf '%s\n' "$C10" "$C20" "$C30" >list
    run -0 --separate-stderr ckpt-ship --keep 2 --files-from=list dst
    assert_equal "${#lines[@]}" 3
    run -0 published dst
    assert_output $'latest\nnotes.txt\nother.tar.zst\nstep-00000020.tar.zst\nstep-00000030.tar.zst'
    assert_equal "$(readlink dst/latest)" step-00000030.tar.zst
    # an older step shipped later does not move latest; --keep 1 prunes to one
    run -0 --separate-stderr ckpt-ship "$C10" dst
    assert_equal "$(readlink dst/latest)" step-00000030.tar.zst
    # the archive just acknowledged is never the one pruned, even when older
    run -0 --separate-stderr ckpt-ship --keep 1 "$A20" dst
    run -0 published dst
    assert_output $'latest\nnotes.txt\nother.tar.zst\nstep-00000020.tar.zst\nstep-00000030.tar.zst'
    # pruning happens when the archive is already there too
    run -0 --separate-stderr ckpt-ship --keep 1 "$A30" dst
    run -0 published dst
    assert_output $'latest\nnotes.txt\nother.tar.zst\nstep-00000030.tar.zst'
    cmp "$A30" dst/step-00000030.tar.zst
}

@test "DIR is created if missing, not its parent; a DIR with a colon after a slash is local" {
    run -1 --separate-stderr ckpt-ship "$C10" nope/deeper
    assert_equal "$output" ""
    [[ -n $stderr ]] || fail "no message"
    [[ ! -e nope ]] || fail "nope was created"
    run -0 --separate-stderr ckpt-ship "$C10" ./a:b
    assert_output "./a:b/step-00000010.tar.zst"
    cmp "$A10" a:b/step-00000010.tar.zst
    mkdir x
    run -0 --separate-stderr ckpt-ship "$C10" "$BATS_TEST_TMPDIR/x/c:d"
    cmp "$A10" x/c:d/step-00000010.tar.zst
}

@test "--bwlimit: a rate in KiB/s, or with a suffix, slows the transfer down" {
    local t0 t1 size
    size=$(stat -c %s "$AMID")
    ((size > 200000)) || fail "the fixture archive is too small ($size bytes)"
    t0=$(date +%s%N)
    # 0.0625M = 64 KiB/s: at least 3 s for ~240 KB (2 s allowing a 1 s burst)
    run -0 --separate-stderr ckpt-ship --bwlimit 0.0625M "$AMID" dst
    t1=$(date +%s%N)
    cmp "$AMID" dst/step-00000040.tar.zst
    (((t1 - t0) / 1000000 >= 2000)) || fail "shipped in $(((t1 - t0) / 1000000)) ms at 64 KiB/s"
    run -0 --separate-stderr ckpt-ship --bwlimit 100000 "$AMID" dst2
    run -0 --separate-stderr ckpt-ship --bwlimit 1G "$AMID" dst3
    cmp "$AMID" dst3/step-00000040.tar.zst
}

# ---- bad input ----------------------------------------------------------------------

@test "bad SRC: missing, not an archive, a checkpoint that fails its manifest: exit 1, nothing published" {
    run -1 --separate-stderr ckpt-ship nope dst
    assert_equal "$output" ""
    assert_regex "$stderr" "^ckpt-ship: nope: .*No such file or directory"
    run -1 --separate-stderr ckpt-ship "$F/spec.yaml" dst
    assert_equal "$output" ""
    assert_regex "$stderr" "spec.yaml"
    need zstd zstd
    zstd -dc "$A10" >plain.tar
    run -1 --separate-stderr ckpt-ship plain.tar dst
    assert_regex "$stderr" "plain.tar"
    cp -r "$C10" bad
    echo >>bad/state.yaml
    run -1 --separate-stderr ckpt-ship bad dst
    assert_equal "$output" ""
    assert_regex "$stderr" 'bad/state.yaml'
    if [[ -d dst ]]; then
        run -0 published dst
        assert_output ""
        run -0 parts dst
        assert_output ""
    fi
    # one good, one bad: the good one is shipped, the exit status is 1
    run -1 --separate-stderr ckpt-ship "$C10" nope dst
    assert_output "dst/step-00000010.tar.zst"
    cmp "$A10" dst/step-00000010.tar.zst
}

@test "a damaged archive is shipped byte for byte: the transport does not look inside" {
    local n b
    n=$(stat -c %s "$A10")
    cp "$A10" damaged.tar.zst
    b=$(od -An -tu1 -j $((n / 2)) -N1 damaged.tar.zst | tr -d ' ')
    # shellcheck disable=SC2059
    printf "\\$(printf '%03o' $((b ^ 1)))" | dd of=damaged.tar.zst bs=1 seek=$((n / 2)) conv=notrunc status=none
    ! cmp -s damaged.tar.zst "$A10" || fail "the byte was not changed"
    run -0 --separate-stderr ckpt-ship damaged.tar.zst dst
    assert_output "dst/damaged.tar.zst"
    cmp damaged.tar.zst dst/damaged.tar.zst
    head -c $((n / 2)) "$A10" >cut.tar.zst
    run -0 --separate-stderr ckpt-ship cut.tar.zst dst
    cmp cut.tar.zst dst/cut.tar.zst
}

@test "--name: only a plain file name; nothing lands outside DIR" {
    mkdir dst
    local name
    for name in ../escape.tar.zst sub/x.tar.zst /abs.tar.zst .. . ""; do
        run --separate-stderr ckpt-ship --name "$name" "$A10" dst/in
        ((status == 1 || status == 2)) || fail "--name '$name': exit $status"
        assert_equal "$output" ""
    done
    [[ ! -e escape.tar.zst && ! -e dst/escape.tar.zst && ! -e /abs.tar.zst ]] || fail "a file landed outside DIR"
    if [[ -d dst/in ]]; then
        run -0 find dst/in -mindepth 1
        assert_output ""
    fi
}

# ---- the receiving end, spoken to directly --------------------------------------------

@test "--receive speaks protocol 1: greeting, HAVE, OK; a wrong hash or name is refused" {
    local size hash
    size=$(stat -c %s "$A10")
    hash=$(xxh3 "$A10") || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
    mkdir dst
    run -0 --separate-stderr bash -c "{ printf 'OFFER %s %s %s\n' $size $hash x%20y.tar.zst
        printf 'DATA %s\n' $size; cat '$A10'; printf 'END %s %s\nBYE\n' $size $hash; } |
        ckpt-ship --receive dst"
    assert_output $'ckpt-ship 1 ready\nHAVE 0\nOK x%20y.tar.zst'
    cmp "$A10" "dst/x y.tar.zst"
    # the same again: EXISTS
    run -0 --separate-stderr bash -c "printf 'OFFER %s %s %s\nBYE\n' $size $hash x%20y.tar.zst |
        ckpt-ship --receive dst"
    assert_output $'ckpt-ship 1 ready\nEXISTS'
    # a hash that does not match the bytes: ERR, nothing published, no partial
    local wrong=0123456789abcdef
    [[ $hash != "$wrong" ]] || wrong=fedcba9876543210
    run --separate-stderr bash -c "{ printf 'OFFER %s %s %s\n' $size $wrong bad.tar.zst
        printf 'DATA %s\n' $size; cat '$A10'; printf 'END %s %s\nBYE\n' $size $wrong; } |
        ckpt-ship --receive dst"
    assert_line --index 0 'ckpt-ship 1 ready'
    assert_line --index 1 'HAVE 0'
    assert_line --index 2 --regexp '^ERR '
    [[ ! -e dst/bad.tar.zst ]] || fail "published despite a wrong hash"
    run -0 parts dst
    assert_output ""
    # names that are not plain file names
    local n
    for n in ..%2Fup.tar.zst %2Fabs.tar.zst .. a%2Fb; do
        run --separate-stderr bash -c "{ printf 'OFFER %s %s %s\n' $size $hash $n
            printf 'DATA %s\n' $size; cat '$A10'; printf 'END %s %s\nBYE\n' $size $hash; } |
            ckpt-ship --receive dst/sub"
        assert_line --index 1 --regexp '^REFUSE '
    done
    [[ ! -e up.tar.zst && ! -e dst/up.tar.zst && ! -e /abs.tar.zst ]] || fail "a name escaped DIR"
}

@test "--receive refuses an offer larger than the room left in DIR, before a byte is sent" {
    # 2^62 bytes: more than any file system has free
    local huge=4611686018427387904
    mkdir dst
    run -0 --separate-stderr bash -c "printf 'OFFER %s %s %s\nBYE\n' $huge 0123456789abcdef big.tar.zst |
        ckpt-ship --receive dst"
    assert_line --index 0 'ckpt-ship 1 ready'
    assert_line --index 1 --regexp "^REFUSE big\.tar\.zst: $huge bytes to receive, [0-9]+ free in dst\$"
    assert_equal "${#lines[@]}" 2
    run -0 ls -A dst
    assert_output ""
    # the session goes on: the next offer, of a size that fits, is taken
    local size hash
    size=$(stat -c %s "$A10")
    hash=$(xxh3 "$A10")
    run -0 --separate-stderr bash -c "{ printf 'OFFER %s %s %s\n' $huge 0123456789abcdef big.tar.zst
        printf 'OFFER %s %s %s\n' $size $hash a.tar.zst
        printf 'DATA %s\n' $size; cat '$A10'; printf 'END %s %s\nBYE\n' $size $hash; } |
        ckpt-ship --receive dst"
    assert_line --index 1 --regexp '^REFUSE big\.tar\.zst: '
    assert_line --index 2 'HAVE 0'
    assert_line --index 3 'OK a.tar.zst'
    cmp "$A10" dst/a.tar.zst
}

@test "--receive never replaces a file that takes the name while the bytes come (other bytes: REFUSE)" {
    # the name is free at OFFER (HAVE 0); another writer takes it before the
    # data has come: the verified bytes must not be renamed over its file
    local size hash
    size=$(stat -c %s "$A10")
    hash=$(xxh3 "$A10")
    mkdir dst
    mkfifo in
    exec 7<>in
    ckpt-ship -v --receive --timeout 30 dst <in >out 2>err &
    BG_PID=$!
    printf 'OFFER %s %s %s\n' "$size" "$hash" c.tar.zst >&7
    wait_for_match out '^HAVE 0$' || fail "no HAVE: $(cat out err)"
    printf 'another writer\n' >dst/c.tar.zst
    { printf 'DATA %s\n' "$size"; cat "$A10"; printf 'END %s %s\n' "$size" "$hash"; } >&7
    wait_for_match out '^(REFUSE|ERR|OK) ' || fail "no answer to the data: $(cat out err)"
    # the same bytes under the name: that is success, and the file stays
    printf 'OFFER %s %s %s\n' "$size" "$hash" d.tar.zst >&7
    local n=100
    while (($(grep -c '^HAVE 0$' out) < 2)); do
        ((n-- > 0)) || fail "no second HAVE: $(cat out err)"
        sleep 0.1
    done
    cp "$A10" dst/d.tar.zst
    local ino
    ino=$(stat -c %i dst/d.tar.zst)
    { printf 'DATA %s\n' "$size"; cat "$A10"; printf 'END %s %s\nBYE\n' "$size" "$hash"; } >&7
    exec 7>&-
    bg_exit 0
    run -0 cat out
    assert_output "ckpt-ship 1 ready
HAVE 0
REFUSE dst/c.tar.zst exists with other contents; not overwritten
HAVE 0
OK d.tar.zst"
    [[ $(cat dst/c.tar.zst) == 'another writer' ]] || fail "the other writer's file was replaced"
    [[ $(stat -c %i dst/d.tar.zst) == "$ino" ]] || fail "a file with the same bytes was replaced"
    cmp "$A10" dst/d.tar.zst
    run -0 grep -F 'dst/d.tar.zst: already there' err
    run -0 parts dst
    assert_output ""
}

# ---- remote command lines (a stand-in for ssh) --------------------------------------------

@test "remote: the host is one word, the remote command quoted words; odd DIR and --name land exactly" {
    fake_rsh
    local odd dir
    odd=$(odd_name)
    dir="$BATS_TEST_TMPDIR/r$odd"
    run -0 --separate-stderr ckpt-ship -e "$FAKE" --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" \
        "$C10" "loopback:$dir"
    assert_output "loopback:$dir/step-00000010.tar.zst"
    assert_equal "$stderr" ""
    cmp "$A10" "$dir/step-00000010.tar.zst"
    assert_equal "$(rsh_arg 0)" loopback
    no_stray
    # the odd name as --name too, and as the host: one argument to the rsh
    run -0 --separate-stderr ckpt-ship -e "$FAKE" --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" \
        --name "$odd.tar.zst" "$A20" "u@h\$(touch ${PWNED}h);x:$dir"
    assert_output "u@h\$(touch ${PWNED}h);x:$dir/$odd.tar.zst"
    cmp "$A20" "$dir/$odd.tar.zst"
    assert_equal "$(rsh_arg 0)" "u@h\$(touch ${PWNED}h);x"
    no_stray
    run -0 published "$dir"
    assert_output "$(printf '%s\n' "$odd.tar.zst" latest step-00000010.tar.zst | LC_ALL=C sort)"
    # an IPv6 address in brackets reaches the rsh without them
    run -0 --separate-stderr ckpt-ship -e "$FAKE" --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" \
        "$C20" "[::1]:$dir"
    assert_output "[::1]:$dir/step-00000020.tar.zst"
    assert_equal "$(rsh_arg 0)" "::1"
    # with a user: user@address for ssh, the destination as written on stdout
    run -0 --separate-stderr ckpt-ship -e "$FAKE" --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" \
        "$C30" "u@[fe80::1]:$dir"
    assert_output "u@[fe80::1]:$dir/step-00000030.tar.zst"
    assert_equal "$(rsh_arg 0)" "u@fe80::1"
    # a relative DIR is relative to the login directory
    run -0 --separate-stderr ckpt-ship -e "$FAKE" --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" \
        "$C10" "host:rel dir"
    assert_output "host:rel dir/step-00000010.tar.zst"
    cmp "$A10" "home/rel dir/step-00000010.tar.zst"
    no_stray
}

@test "remote: a DIR that starts with a dash is a directory, not an option" {
    fake_rsh
    run -0 --separate-stderr ckpt-ship -e "$FAKE" --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" \
        "$C10" "host:-v"
    assert_output "host:-v/step-00000010.tar.zst"
    cmp "$A10" "home/-v/step-00000010.tar.zst"
    run -0 --separate-stderr ckpt-ship -e "$FAKE" --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" \
        "$C10" "host:--keep=1"
    cmp "$A10" "home/--keep=1/step-00000010.tar.zst"
}

@test "local: an odd DIR and an odd --name land exactly, nothing runs" {
    local odd
    odd=$(odd_name)
    run -0 --separate-stderr ckpt-ship "$C10" "./$odd"
    assert_output "./$odd/step-00000010.tar.zst"
    cmp "$A10" "$odd/step-00000010.tar.zst"
    run -0 --separate-stderr ckpt-ship --name "$odd" "$A20" "./$odd"
    assert_output "./$odd/$odd"
    cmp "$A20" "$odd/$odd"
    run -0 --separate-stderr ckpt-ship --name "-n" "$A20" "./$odd"
    cmp "$A20" "$odd/-n"
    no_stray
}

@test "remote: the rsh fails, says something else, never answers; the receiver is not found" {
    fake_rsh
    local rp
    rp=$(printf %q "$MNN_BIN/ckpt-ship")
    # ssh cannot connect
    run -1 --separate-stderr ckpt-ship --retries 0 -e false "$C10" host:dst
    assert_equal "$output" ""
    [[ -n $stderr ]] || fail "no message"
    # the receiver is not there
    run -1 --separate-stderr ckpt-ship --retries 0 -e "$FAKE" --receive-path /nonexistent/ckpt-ship \
        "$C10" host:dst
    assert_equal "$output" ""
    [[ -n $stderr ]] || fail "no message"
    [[ ! -e home/dst ]] || fail "home/dst exists"
    # a greeting that is not protocol 1
    printf '#!/bin/sh\necho "SSH-2.0-something else"\ncat >/dev/null\n' >liar
    chmod +x liar
    run -1 --separate-stderr ckpt-ship --retries 0 -e ./liar --receive-path "$rp" "$C10" host:dst
    assert_equal "$output" ""
    [[ -n $stderr ]] || fail "no message"
    # no answer at all: --timeout gives up
    printf '#!/bin/sh\necho $$ >"%s/hang.pid"\nexec sleep 30 2>/dev/null 3>&-\n' "$BATS_TEST_TMPDIR" >hang
    chmod +x hang
    local t0 t1
    t0=$(date +%s%N)
    run -1 --separate-stderr ckpt-ship --retries 0 --timeout 1 -e ./hang "$C10" host:dst
    t1=$(date +%s%N)
    [[ -n $stderr ]] || fail "no message"
    (((t1 - t0) / 1000000 < 10000)) || fail "--timeout 1 gave up after $(((t1 - t0) / 1000000)) ms"
}

@test "a receiver that outlives its input and ignores SIGTERM is killed: the sender's wait is bounded" {
    # it greets, takes the offer, answers nothing, does not end at the end
    # of its input, and notes each SIGTERM without obeying it
    cat >stubborn <<EOF
#!/bin/sh
trap 'echo TERM >>"$BATS_TEST_TMPDIR/terms"' TERM
echo \$\$ >"$BATS_TEST_TMPDIR/stubborn.pid"
echo 'ckpt-ship 1 ready'
read -r offer
while :; do sleep 1 </dev/null >/dev/null 2>&1 & wait \$!; done
EOF
    chmod +x stubborn
    local t0 t1 pid
    t0=$(date +%s%N)
    # exec: the sender's child is the receiver itself, not a shell around it
    run -1 --separate-stderr timeout 60 ckpt-ship --retries 0 --timeout 1 -e 'exec ./stubborn' \
        "$A10" host:dst 3>&-
    t1=$(date +%s%N)
    assert_output ""
    assert_regex "$stderr" 'step-00000010\.tar\.zst: no answer within --timeout$'
    # asked to go (SIGTERM) before it was made to (SIGKILL), and gone
    run -0 cat terms
    assert_output TERM
    pid=$(cat stubborn.pid)
    ! kill -0 "$pid" 2>/dev/null || fail "the receiver (pid $pid) is still running"
    # --timeout 1, then at most 2 s to go on its own and 3 s after SIGTERM
    (((t1 - t0) / 1000000 < 20000)) || fail "ckpt-ship took $(((t1 - t0) / 1000000)) ms"
}

@test "a receiver that only says WAIT, or trickles its answer, holds the sender at most --timeout" {
    # it greets, reads the offer, then says 'WAIT' with no progress, forever
    cat >waiter <<'EOF'
#!/bin/sh
echo 'ckpt-ship 1 ready'
read -r offer
while :; do echo 'WAIT 7'; sleep 0.2; done
EOF
    # it greets, then answers the offer one byte at a time; a sender that
    # took the answer (a new --timeout for each byte) would send DATA next,
    # which it keeps
    cat >trickler <<'EOF'
#!/bin/sh
echo 'ckpt-ship 1 ready'
read -r offer
for c in H A V E ' ' 0; do printf %s "$c"; sleep 0.5; done
echo
read -r next && printf '%s\n' "$next" >next
cat >/dev/null
EOF
    chmod +x waiter trickler
    run -1 --separate-stderr timeout 60 ckpt-ship --retries 0 --timeout 1 -e ./waiter "$A10" host:dst
    assert_output ""
    assert_regex "$stderr" 'step-00000010\.tar\.zst: the receiver made no progress within --timeout$'
    run -1 --separate-stderr timeout 60 ckpt-ship --retries 0 --timeout 1 -e ./trickler "$A10" host:dst
    assert_output ""
    assert_regex "$stderr" 'step-00000010\.tar\.zst: no answer within --timeout$'
    [[ ! -s next ]] || fail "the sender waited out the trickle and went on: $(cat next)"
    # the receiver's side: an offer that trickles in, a byte each 0.4 s, once
    # the receiver has greeted: it closes --timeout after its greeting
    mkfifo in
    exec 7<>in
    ckpt-ship -v --receive --timeout 1 dst <in >out 2>err &
    BG_PID=$!
    wait_for_match out '^ckpt-ship 1 ready$' || fail "no greeting: $(cat err)"
    local c
    for c in O F F E R ' ' 1 2; do
        printf %s "$c" >&7
        sleep 0.4
    done
    echo >&7
    exec 7>&-
    bg_exit 1
    run -0 cat out
    assert_output 'ckpt-ship 1 ready'
    run -0 cat err
    assert_output --regexp 'dst: no word from the sender within --timeout; closing$'
}

@test "--receive waits for the next offer at most --timeout; NOOP keeps a quiet sender's connection" {
    local size hash
    size=$(stat -c %s "$A10")
    hash=$(xxh3 "$A10")
    mkfifo in
    exec 7<>in
    { printf 'OFFER %s %s %s\n' "$size" "$hash" step-00000010.tar.zst
        printf 'DATA %s\n' "$size"; cat "$A10"; printf 'END %s %s\n' "$size" "$hash"; } >&7
    # then the sender says nothing more, and does not hang up (fd 7 stays open)
    run -1 --separate-stderr timeout 60 ckpt-ship -v --receive --timeout 1 dst <in
    exec 7>&-
    assert_output $'ckpt-ship 1 ready\nHAVE 0\nOK step-00000010.tar.zst'
    assert_regex "$stderr" 'dst: no word from the sender within --timeout; closing$'
    cmp "$A10" dst/step-00000010.tar.zst
    # a sender that sends NOOP between offers is waited for: 3 s of NOOPs,
    # 0.3 s apart, against a --timeout of 2 s (1.7 s of slack for a loaded
    # machine at each one)
    run -0 --separate-stderr timeout 60 bash -c "{ for i in 1 2 3 4 5 6 7 8 9 10; do echo NOOP; sleep 0.3; done
        echo BYE; } | ckpt-ship --receive --timeout 2 dst2"
    assert_output 'ckpt-ship 1 ready'
}

@test "--files-from: a path slow to come keeps its connection (NOOP), one connection for all" {
    run -0 --separate-stderr timeout 60 bash -c "{ echo '$C10'; sleep 2.5; echo '$C20'; } |
        ckpt-ship -v --timeout 1 --files-from=- dst"
    assert_output $'dst/step-00000010.tar.zst\ndst/step-00000020.tar.zst'
    assert_equal "$(grep -c 'connecting' <<<"$stderr")" 1
    cmp "$A20" dst/step-00000020.tar.zst
    # a last path without its newline is shipped too
    run -0 --separate-stderr bash -c "printf %s '$C30' | ckpt-ship --files-from=- dst"
    assert_output dst/step-00000030.tar.zst
}

# ---- through sshd --------------------------------------------------------------------------

@test "sshd: a directory, an archive, '-', --files-from over one connection, --keep" {
    need_sshd
    local r=$BATS_TEST_TMPDIR/remote
    run -0 --separate-stderr ship_ssh "$C10" "loopback:$r"
    assert_output "loopback:$r/step-00000010.tar.zst"
    assert_equal "$stderr" ""
    cmp "$A10" "$r/step-00000010.tar.zst"
    assert_equal "$(readlink "$r/latest")" step-00000010.tar.zst
    run -0 --separate-stderr ship_ssh "$A20" "loopback:$r"
    cmp "$A20" "$r/step-00000020.tar.zst"
    run -0 --separate-stderr bash -c "cat '$A30' | ckpt-ship -e '$RSH' --receive-path '$RP' - 'loopback:$r'"
    assert_output "loopback:$r/step-00000030.tar.zst"
    cmp "$A30" "$r/step-00000030.tar.zst"
    assert_equal "$(readlink "$r/latest")" step-00000030.tar.zst
    # again: already there, exit 0
    run -0 --separate-stderr ship_ssh -v "$C10" "loopback:$r"
    assert_output "loopback:$r/step-00000010.tar.zst"
    assert_regex "$stderr" 'step-00000010.tar.zst: already there'
    # other bytes: refused, with the receiver's word for it
    run -1 --separate-stderr ship_ssh --level 19 "$C10" "loopback:$r"
    assert_regex "$stderr" 'ckpt-ship: step-[0-9]+\.tar\.zst: the receiver said: .*exists with other contents; not overwritten'
    cmp "$A10" "$r/step-00000010.tar.zst"
    # --files-from: three checkpoints, one ssh connection, --keep 2
    printf '#!/bin/sh\necho x >>"%s/connections"\nexec %s "$@"\n' "$BATS_TEST_TMPDIR" "$RSH" >count-rsh
    chmod +x count-rsh
    printf '%s\n' "$C10" "$C20" "$MID" >list
    run -0 --separate-stderr ckpt-ship -e ./count-rsh --receive-path "$RP" --keep 2 \
        --files-from=list "loopback:$r/k"
    assert_output "$(printf "loopback:$r/k/%s\n" step-00000010.tar.zst step-00000020.tar.zst step-00000040.tar.zst)"
    assert_equal "$(wc -l <connections)" 1
    run -0 published "$r/k"
    assert_output $'latest\nstep-00000020.tar.zst\nstep-00000040.tar.zst'
    cmp "$AMID" "$r/k/step-00000040.tar.zst"
    run -0 parts "$r/k"
    assert_output ""
}

@test "sshd: odd DIR and --name: one argument each, nothing runs, the file lands where named" {
    need_sshd
    local odd dir
    odd=$(odd_name)
    dir="$BATS_TEST_TMPDIR/r$odd"
    run -0 --separate-stderr ship_ssh "$C10" "loopback:$dir"
    assert_output "loopback:$dir/step-00000010.tar.zst"
    cmp "$A10" "$dir/step-00000010.tar.zst"
    run -0 --separate-stderr ship_ssh --name "$odd" "$A20" "loopback:$dir"
    assert_output "loopback:$dir/$odd"
    cmp "$A20" "$dir/$odd"
    run -0 published "$dir"
    assert_output "$(printf '%s\n' "$odd" latest step-00000010.tar.zst | LC_ALL=C sort)"
    run -0 find "$BATS_TEST_TMPDIR" -maxdepth 1 -name 'r*' -printf '%f\n'
    assert_output "r$odd"
    no_stray
}

@test "sshd: the connection killed in the middle; the next run resumes and sends only the rest" {
    need_sshd
    local r=$BATS_TEST_TMPDIR/remote m part held
    m=$(stat -c %s "$AMID")
    # the rsh and the receiver write their pids: the test kills the first,
    # and waits for the second to be gone
    printf '#!/bin/sh\necho $$ >"%s/rsh.pid"\nexec %s "$@"\n' "$BATS_TEST_TMPDIR" "$RSH" >pid-rsh
    printf '#!/bin/sh\necho $$ >"%s/recv.pid"\nexec %s "$@"\n' "$BATS_TEST_TMPDIR" "$RP" >pid-recv
    chmod +x pid-rsh pid-recv
    ckpt-ship --retries 0 --bwlimit 32 -e ./pid-rsh --receive-path "$BATS_TEST_TMPDIR/pid-recv" \
        "$MID" "loopback:$r" >out 2>err &
    BG_PID=$!
    local n=200
    until part=$(parts "$r" 2>/dev/null) && [[ -n $part ]] && [[ -s $r/$part ]]; do
        ((n-- > 0)) || fail "no partial file grew in $r: $(cat err)"
        sleep 0.1
    done
    assert_regex "$part" '^\.ckpt-ship-[0-9a-f]{16}\.part$'
    kill -9 "$(cat rsh.pid)"
    bg_exit 1
    run -0 cat out
    assert_output ""
    [[ -s err ]] || fail "no message on a killed connection"
    # the receiver notices and goes away, leaving its partial file
    wait_gone "$(cat recv.pid)" 100 || fail "the receiver is still running after its connection died"
    [[ ! -e $r/step-00000040.tar.zst ]] || fail "published although cut short"
    held=$(stat -c %s "$r/$part")
    ((held > 0 && held < m)) || fail "the partial file holds $held of $m bytes"
    cmp -n "$held" "$AMID" "$r/$part"
    # the next run resumes where it stopped
    run -0 --separate-stderr ship_ssh -v "$MID" "loopback:$r"
    assert_output "loopback:$r/step-00000040.tar.zst"
    assert_regex "$stderr" "ckpt-ship: step-00000040.tar.zst: resuming at byte $held of $m"
    assert_regex "$stderr" "ckpt-ship: step-00000040.tar.zst: sent $((m - held)) bytes in "
    cmp "$AMID" "$r/step-00000040.tar.zst"
    run -0 parts "$r"
    assert_output ""
}

# flipper FILE: writes FILE, a filter for the sender's stream that inverts
# the lowest bit of the archive byte at offset $1 (counting the bytes after
# the DATA lines only, whatever their size) and writes the path $2 once done
flipper() {
    cat >"$1" <<'EOF'
my ($at, $done) = @ARGV;
my ($buf, $left, $pos) = ('', 0, 0);
sub out {
    my $s = shift;
    while (length $s) {
        my $w = syswrite(STDOUT, $s) // exit 1;
        substr($s, 0, $w, '');
    }
}
while (1) {
    my $n = sysread(STDIN, my $in, 65536);
    last unless $n;
    $buf .= $in;
    while (length $buf) {
        if ($left > 0) {
            my $k = $left < length $buf ? $left : length $buf;
            my $chunk = substr($buf, 0, $k, '');
            if ($at >= $pos && $at < $pos + $k) {
                vec($chunk, $at - $pos, 8) ^= 1;
                open(my $fh, '>', $done) and close $fh;
            }
            $pos += $k;
            $left -= $k;
            out($chunk);
        } else {
            my $i = index($buf, "\n");
            last if $i < 0;
            my $line = substr($buf, 0, $i + 1, '');
            $left = $1 if $line =~ /^DATA (\d+)\n\z/;
            out($line);
        }
    }
}
out($buf);
EOF
}

@test "sshd: a byte changed in transit: detected, not published, exit 1; a clean retry starts over" {
    need_sshd
    local r=$BATS_TEST_TMPDIR/remote m
    m=$(stat -c %s "$AMID")
    flipper flip.pl
    # corrupts the stream of the first connection only
    cat >corrupt-rsh <<EOF
#!/bin/sh
if [ -e "$BATS_TEST_TMPDIR/flipped" ]; then exec $RSH "\$@"; fi
perl "$BATS_TEST_TMPDIR/flip.pl" $((m / 2)) "$BATS_TEST_TMPDIR/flipped" | $RSH "\$@"
EOF
    chmod +x corrupt-rsh
    run -1 --separate-stderr ckpt-ship --retries 0 -e ./corrupt-rsh --receive-path "$RP" \
        "$MID" "loopback:$r"
    [[ -e flipped ]] || fail "the wrapper did not change a byte: the test proves nothing"
    assert_equal "$output" ""
    assert_regex "$stderr" 'ckpt-ship: step-[0-9]+\.tar\.zst: the receiver said: .*([Xx][Xx][Hh]3|hash)'
    [[ ! -e $r/step-00000040.tar.zst ]] || fail "a corrupted archive was published"
    [[ ! -e $r/latest && ! -L $r/latest ]] || fail "latest was made"
    run -0 parts "$r"
    assert_output ""
    # corrupted on the first attempt only: the retry starts over and succeeds
    rm flipped
    run -0 --separate-stderr ckpt-ship -v --retries 1 -e ./corrupt-rsh --receive-path "$RP" \
        "$MID" "loopback:$r"
    [[ -e flipped ]] || fail "the wrapper did not change a byte the second time"
    assert_output "loopback:$r/step-00000040.tar.zst"
    assert_regex "$stderr" 'step-00000040.tar.zst: attempt 1 failed: .*; retrying in 1 s'
    refute_regex "$stderr" 'resuming at byte'
    assert_regex "$stderr" "step-00000040.tar.zst: sent $m bytes in "
    cmp "$AMID" "$r/step-00000040.tar.zst"
}

@test "sshd: the receiving file system full (ulimit -f): a clear error, the previous checkpoint intact" {
    need_sshd
    local r=$BATS_TEST_TMPDIR/remote
    run -0 --separate-stderr ship_ssh "$C10" "loopback:$r"
    # 64 blocks (of 512 or 1024 bytes, by the remote shell): less than the archive
    run -1 --separate-stderr ckpt-ship --retries 0 -e "$RSH" --receive-path "ulimit -f 64; $RP" \
        "$MID" "loopback:$r"
    assert_equal "$output" ""
    assert_regex "$stderr" 'ckpt-ship: step-[0-9]+\.tar\.zst: the receiver said: .*(File too large|No space left on device)'
    [[ ! -e $r/step-00000040.tar.zst ]] || fail "published although it did not fit"
    cmp "$A10" "$r/step-00000010.tar.zst"
    assert_equal "$(readlink "$r/latest")" step-00000010.tar.zst
    # the same limit, an archive that fits
    run -0 --separate-stderr ckpt-ship --retries 0 -e "$RSH" --receive-path "ulimit -f 64; $RP" \
        "$C20" "loopback:$r"
    cmp "$A20" "$r/step-00000020.tar.zst"
}

@test "sshd: the receiver killed before it acknowledges: failure reported, a retry completes" {
    need_sshd
    local r=$BATS_TEST_TMPDIR/remote
    # the first receiver is killed as it sends OK: its OK never arrives
    cat >ack-killer <<EOF
#!/bin/sh
if [ -e "$BATS_TEST_TMPDIR/killed" ]; then exec $RP "\$@"; fi
: >"$BATS_TEST_TMPDIR/killed"
exec perl -e '
    \$| = 1;
    my \$pid = open(my \$r, "-|") // die "fork: \$!";
    if (!\$pid) { exec @ARGV or die "exec: \$!" }
    while (my \$l = <\$r>) {
        if (\$l =~ /^OK /) { kill "KILL", \$pid; waitpid \$pid, 0; exit 1 }
        print \$l;
    }
' $RP "\$@"
EOF
    chmod +x ack-killer
    # no retry: the failure is reported
    run -1 --separate-stderr ckpt-ship --retries 0 -e "$RSH" --receive-path "$BATS_TEST_TMPDIR/ack-killer" \
        "$C10" "loopback:$r"
    [[ -e killed ]] || fail "the wrapper did not run"
    assert_equal "$output" ""
    [[ -n $stderr ]] || fail "no message"
    # it was published before the OK that never came
    cmp "$A10" "$r/step-00000010.tar.zst"
    # one retry: it completes
    rm killed
    run -0 --separate-stderr ckpt-ship -v --retries 1 -e "$RSH" \
        --receive-path "$BATS_TEST_TMPDIR/ack-killer" "$C20" "loopback:$r"
    [[ -e killed ]] || fail "the wrapper did not run"
    assert_output "loopback:$r/step-00000020.tar.zst"
    assert_regex "$stderr" 'step-00000020.tar.zst: attempt 1 failed: .*; retrying in 1 s'
    cmp "$A20" "$r/step-00000020.tar.zst"
    run -0 parts "$r"
    assert_output ""
}

@test "sshd: migration: train, SIGTERM, ship, ckpt-resume there: the weights of a run that never stopped" {
    need_sshd
    local r=$BATS_TEST_TMPDIR/remote there=$BATS_TEST_TMPDIR/there
    sgd-train -q -m "$F/spec.yaml" -o straight <"$F/train.csv" >/dev/null
    mkfifo in
    exec 7<>in
    sgd-train -m "$F/spec.yaml" --ckpt-dir ck <in >paths 2>err 7>&- &
    BG_PID=$!
    head -n 300 "$F/train.csv" >&7
    # the progress table reaches 256 records: training is under way
    wait_for_match err '^ +256 ' || fail "sgd-train did not train: $(cat err)"
    kill -TERM "$BG_PID"
    wait_gone "$BG_PID" || fail "sgd-train still running after SIGTERM"
    exec 7>&-
    bg_exit 3 # stopped before the end of its input
    local ckpt seen
    ckpt=$(cat paths)
    [[ $ckpt =~ ^ck/step-000000[0-9][0-9]$ ]] || fail "no checkpoint on SIGTERM: $ckpt"
    seen=$(field ck/latest/state.yaml records_seen)
    ((seen >= 256 && seen < 600)) || fail "records_seen $seen"
    # ship it
    run -0 --separate-stderr ship_ssh ck "loopback:$r"
    assert_output "loopback:$r/${ckpt#ck/}.tar.zst"
    assert_equal "$(readlink "$r/latest")" "${ckpt#ck/}.tar.zst"
    # and go on there, from the whole input again
    mkdir "$there"
    run -0 --separate-stderr ckpt-resume -q -w "$there" "$r/latest" \
        -q --ckpt-dir "$there" --skip-seen <"$F/train.csv"
    assert_output "$there/step-00000150"
    local f
    for f in model.safetensors optimizer.safetensors; do
        cmp straight/$f "$there/step-00000150/$f"
    done
    assert_equal "$(field "$there/step-00000150/state.yaml" records_seen)" 600
}

@test "a stream cut short is not published: only a whole checkpoint archive comes from '-'" {
    mkdir dst
    local m
    m=$(stat -c %s "$AMID")
    run -1 --separate-stderr ckpt-ship --name cut.tar.zst - dst < <(head -c $((m / 2)) "$AMID")
    assert_regex "$stderr" 'not a whole checkpoint archive'
    run -0 published dst
    assert_output ""
    run -0 parts dst
    assert_output ""
    # without --name either
    run -1 --separate-stderr ckpt-ship - dst < <(head -c $((m / 2)) "$AMID")
    run -0 published dst
    assert_output ""
    # the whole stream is published
    run -0 --separate-stderr ckpt-ship - dst <"$AMID"
    assert_output "dst/step-00000040.tar.zst"
    cmp "$AMID" dst/step-00000040.tar.zst
}

@test "a connection that breaks while an archive file is sent: a retry resumes it" {
    fake_rsh
    local m=4000004
    # larger than the pipes on the way: the sender sees the break as it writes
    { printf '\050\265\057\375'; head -c $((m - 4)) /dev/urandom; } >step-00000040.tar.zst
    # the first connection carries only part of the stream, then breaks
    cat >cut-rsh <<EOF
#!/bin/sh
if [ -e "$BATS_TEST_TMPDIR/cut" ]; then exec "$FAKE" "\$@"; fi
: >"$BATS_TEST_TMPDIR/cut"
dd bs=4096 iflag=count_bytes count=$((m / 3)) status=none | "$FAKE" "\$@"
EOF
    chmod +x cut-rsh
    run -0 --separate-stderr ckpt-ship -v --retries 1 -e ./cut-rsh \
        --receive-path "$(printf %q "$MNN_BIN/ckpt-ship")" step-00000040.tar.zst host:dst
    [[ -e cut ]] || fail "the wrapper did not run"
    assert_output "host:dst/step-00000040.tar.zst"
    assert_regex "$stderr" 'step-00000040.tar.zst: attempt 1 failed: .*; retrying in 1 s'
    assert_regex "$stderr" 'step-00000040.tar.zst: resuming at byte [1-9][0-9]* of '"$m"
    cmp step-00000040.tar.zst home/dst/step-00000040.tar.zst
}

@test "NOOP frames keep a slow sender's connection; latest is repaired when the archive is there" {
    local size hash
    size=$(stat -c %s "$A10")
    hash=$(xxh3 "$A10")
    run -0 --separate-stderr bash -c "{ printf 'OFFER %s %s %s\nNOOP\n' $size $hash step-00000010.tar.zst
        printf 'DATA %s\n' $size; cat '$A10'; printf 'NOOP\nEND %s %s\nBYE\n' $size $hash; } |
        ckpt-ship --receive dst"
    assert_output $'ckpt-ship 1 ready\nHAVE 0\nOK step-00000010.tar.zst'
    cp "$A20" dst/step-00000020.tar.zst
    # latest lags behind (a receiver that died before it moved latest)
    assert_equal "$(readlink dst/latest)" step-00000010.tar.zst
    run -0 --separate-stderr ckpt-ship --keep 1 "$A20" dst
    assert_equal "$(readlink dst/latest)" step-00000020.tar.zst
    run -0 published dst
    assert_output $'latest\nstep-00000020.tar.zst'
}
