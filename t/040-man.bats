#!/usr/bin/env bats
# 040-man: the manual pages: mandoc -Tlint clean, every option of --help
# documented, EXIT STATUS present.

bats_require_minimum_version 1.5.0
load helpers

PAGES=(man/sgd-train.1 man/infer.1 man/ckpt-pack.1 man/ckpt-resume.1 man/ckpt-ship.1 man/stream-sample.1 man/replay-buffer.1
    man/stream-ingest.1 man/ckpt-merge.1 man/mini-nn.7)
PROGS=(sgd-train infer ckpt-pack ckpt-resume ckpt-ship stream-sample replay-buffer stream-ingest
    ckpt-merge)

# lint PAGE: mandoc -Tlint messages, less "referenced manual not found"
# (the pages are not installed while the tests run, so .Xr cannot resolve)
# and a stale system mandoc.db that lacks a page .Xr names (ssh(1))
lint() {
    "$MANDOC" -Tlint "$1" 2>&1 |
        grep -v -e 'STYLE: referenced manual not found' -e 'outdated mandoc.db lacks' || true
}

# render PAGE: plain text, overstriking removed
render() {
    "$MANDOC" -Tascii "$1" | sed 's/.\x08//g'
}

@test "every man page exists and is not empty" {
    for p in "${PAGES[@]}"; do
        [[ -s $MNN_SRC/$p ]] || fail "$p is missing or empty"
    done
}

@test "the man pages in man/ are the ones the build installs" {
    local f
    for f in "$MNN_SRC"/man/*.1 "$MNN_SRC"/man/*.7; do
        [[ -e $f ]] || continue
        run -0 grep -E "(^|[[:space:]])man/${f##*/}([[:space:]]|\$)" "$MNN_SRC/Makefile.am"
    done
}

@test "mandoc -Tlint: no errors, warnings or style messages" {
    [[ $MANDOC != no ]] || fail "mandoc is not installed (Debian package mandoc; MANDOC=no)"
    local f n=0
    for f in "$MNN_SRC"/man/*.1 "$MNN_SRC"/man/*.7; do
        [[ -e $f ]] || continue
        [[ -s $f ]] || fail "${f#"$MNN_SRC"/} is empty"
        run -0 lint "$f"
        assert_output ""
        # and it renders to text with a NAME section
        run -0 render "$f"
        assert_line --regexp '^NAME$'
        assert_line --regexp '^EXIT STATUS$|^DESCRIPTION$' 
        n=$((n + 1))
    done
    ((n >= 3)) || fail "only $n man pages found"
}

@test "every long option in --help appears in the program's man page" {
    for p in "${PROGS[@]}"; do
        local page=$MNN_SRC/man/$p.1 opt missing=()
        [[ -s $page ]] || fail "man/$p.1 is missing or empty"
        run -0 "$p" --help
        local opts
        opts=$(grep -oE -- '--[a-z][a-z-]*' <<<"$output" | sort -u)
        [[ -n $opts ]] || fail "no long options in $p --help"
        for opt in $opts; do
            # mdoc writes --lr as 'Fl -lr'; plain text as \-\-lr or --lr
            grep -qE -- "(Fl -|\\\\-\\\\-|--)${opt#--}([^a-z-]|\$)" "$page" || missing+=("$opt")
        done
        ((${#missing[@]} == 0)) || fail "man/$p.1 does not document: ${missing[*]}"
    done
}

@test "every short option in --help appears in the program's man page" {
    for p in "${PROGS[@]}"; do
        local page=$MNN_SRC/man/$p.1 opt missing=()
        [[ -s $page ]] || fail "man/$p.1 is missing or empty"
        run -0 "$p" --help
        for opt in $(grep -oE -- '^ +-[a-zA-Z],' <<<"$output" | tr -d ' ,-'); do
            grep -qE -- "Fl ([a-zA-Z]+ )*$opt([^a-zA-Z-]|\$)|Fl [a-zA-Z]*$opt[a-zA-Z]*( |\$)" "$page" ||
                missing+=("-$opt")
        done
        ((${#missing[@]} == 0)) || fail "man/$p.1 does not document: ${missing[*]}"
    done
}

@test "each program's man page has NAME, SYNOPSIS, EXIT STATUS and names the program" {
    for p in "${PROGS[@]}"; do
        local page=$MNN_SRC/man/$p.1
        [[ -s $page ]] || fail "man/$p.1 is missing or empty"
        run -0 grep -x '\.Sh NAME' "$page"
        run -0 grep -x '\.Sh SYNOPSIS' "$page"
        run -0 grep -x '\.Sh EXIT STATUS' "$page"
        run -0 grep -x "\\.Nm $p" "$page"
        run -0 grep -E "^\\.Dt $(tr a-z A-Z <<<"$p") 1\$" "$page"
    done
}

@test "EXIT STATUS documents 0, 1 and 2" {
    for p in "${PROGS[@]}"; do
        local page=$MNN_SRC/man/$p.1
        [[ -s $page ]] || fail "man/$p.1 is missing or empty"
        # the section's text, up to the next .Sh
        local sect
        sect=$(awk '/^\.Sh EXIT STATUS/ { on = 1; next } /^\.Sh / { on = 0 } on' "$page")
        [[ -n $sect ]] || fail "man/$p.1 has no EXIT STATUS text"
        local s
        for s in 0 1 2; do
            grep -qE "(^|[^0-9])$s([^0-9]|\$)" <<<"$sect" || fail "man/$p.1 EXIT STATUS does not mention $s"
        done
    done
}

@test "mini-nn(7) refers to every program" {
    local page=$MNN_SRC/man/mini-nn.7
    [[ -s $page ]] || fail "man/mini-nn.7 is missing or empty"
    for p in "${PROGS[@]}"; do
        run -0 grep -E "^\\.Xr $p 1( |\$)" "$page"
    done
}
