#!/usr/bin/env bats
# 100-infer-tiers: cooperative inference.  Records the local model is not
# sure about go to a co-process (--forward) and come back in order, tagged
# with the tier that answered; every fault of the co-process (it exits,
# hangs, lingers, answers garbage, too few or too many lines, cannot start,
# is too slow for the window) falls back to the local answer.  Also the
# threshold chosen from a calibration file, the routing criteria,
# ensembles, --anytime, early exits, the --eval report with its JSON and
# coverage curve, --calibrate, SIGHUP reloads, '#!flush', determinism and
# the usage errors.

bats_require_minimum_version 1.5.0
load helpers

setup_file() {
    cd "$BATS_FILE_TMPDIR" || return 1
    # A and B: unsure classifiers of overlapping classes (lr 0.01), B with
    # another seed and width; test.csv: 150 records, about 30% of them with
    # a confidence below 0.7
    mk_spec soft.yaml
    sed -i 's/lr: 0.1, momentum: 0.9/lr: 0.01, momentum: 0.5/' soft.yaml
    sed 's/^seed: 1$/seed: 5/; s/dense: 8,/dense: 16,/' soft.yaml >soft2.yaml
    mk_noisy_data 600 7 >train.csv
    mk_noisy_data 150 12345 >test.csv
    sgd-train -q -m soft.yaml -o A <train.csv >/dev/null || return 1
    sgd-train -q -m soft2.yaml -o B <train.csv >/dev/null || return 1
    # C: the tiny model on separable data, sure of everything
    mk_spec spec.yaml
    mk_data 600 7 >clean.csv
    sgd-train -q -m spec.yaml -o C <clean.csv >/dev/null || return 1
    # O: overconfident (lr 0.1 on overlapping classes), for --calibrate
    mk_noisy_data 600 7 5 >otrain.csv
    mk_noisy_data 300 999 5 >ocal.csv
    sgd-train -q -m spec.yaml -o O <otrain.csv >/dev/null || return 1
    # E: two hidden layers and an early exit after the first
    printf '%s\n' 'input: 4' 'classes: 3' 'layers:' '  - {dense: 8, activation: relu}' \
        '  - {dense: 8, activation: relu}' '  - {dense: 3}' 'exits: [0]' \
        'optimizer: {type: sgd, lr: 0.01, momentum: 0.5}' 'batch: 4' 'seed: 1' >exits.yaml
    sgd-train -q -m exits.yaml -o E <train.csv >/dev/null || true # checked in its tests
    # shapes that do not fit an ensemble with A: 4 classes, 5 inputs
    sed 's/^classes: 3$/classes: 4/; s/{dense: 3}/{dense: 4}/' soft.yaml >k4.yaml
    awk -F, -v OFS=, 'NR % 4 == 0 { $1 = 3 } 1' train.csv | sgd-train -q -m k4.yaml -o K4 >/dev/null || return 1
    sed 's/^input: 4$/input: 5/' soft.yaml >in5.yaml
    awk '{ print $0 ",0.5" }' train.csv | sgd-train -q -m in5.yaml -o I5 >/dev/null || return 1
    # R: a regression model
    mk_reg_spec reg.yaml
    mk_reg_data 200 >reg.csv
    sgd-train -q -m reg.yaml -o R <reg.csv >/dev/null || return 1
    # the plain answers of A and B
    infer -m A <test.csv >A.out || return 1
    infer -m B <test.csv >B.out || return 1
    infer -m A --proba <test.csv >A.proba || return 1
    infer -m B --proba <test.csv >B.proba || return 1

    # co-processes; every one passes '#' lines back (so that its answers
    # are trusted), unless said otherwise
    # r-ok: '0,0.9' for every record
    cat >r-ok.sh <<'EOF'
while IFS= read -r l; do
    case $l in '#'*) echo "$l" ;; *) echo 0,0.9 ;; esac
done
EOF
    # r-exit N [LOG]: answers N records, then exits; a line in LOG each start
    cat >r-exit.sh <<'EOF'
n=0
[ -z "$2" ] || echo start >>"$2"
while IFS= read -r l; do
    case $l in
    '#'*) echo "$l" ;;
    *) n=$((n + 1)); [ "$n" -gt "$1" ] && exit 0; echo 0,0.9 ;;
    esac
done
EOF
    # r-banana: garbage for every record
    cat >r-banana.sh <<'EOF'
while IFS= read -r l; do
    case $l in '#'*) echo "$l" ;; *) echo banana ;; esac
done
EOF
    # r-drop N: no answer for its Nth record
    cat >r-drop.sh <<'EOF'
n=0
while IFS= read -r l; do
    case $l in
    '#'*) echo "$l" ;;
    *) n=$((n + 1)); [ "$n" -eq "$1" ] || echo 0,0.9 ;;
    esac
done
EOF
    # r-dup: two answers for every record
    cat >r-dup.sh <<'EOF'
while IFS= read -r l; do
    case $l in '#'*) echo "$l" ;; *) echo 0,0.9; echo 0,0.9 ;; esac
done
EOF
    # r-slow S: S seconds per record
    cat >r-slow.sh <<'EOF'
while IFS= read -r l; do
    case $l in '#'*) echo "$l" ;; *) sleep "$1"; echo 0,0.9 ;; esac
done
EOF
    # r-noecho: answers records, drops '#' lines
    cat >r-noecho.sh <<'EOF'
while IFS= read -r l; do
    case $l in '#'*) ;; *) echo 0,0.9 ;; esac
done
EOF
    # r-linger S: answers, then stays S seconds after its input ended
    cat >r-linger.sh <<'EOF'
while IFS= read -r l; do
    case $l in '#'*) echo "$l" ;; *) echo 0,0.9 ;; esac
done
exec sleep "$1"
EOF
    # r-label S: answers 'LABEL,0.99' (the record's own label), after S
    # seconds for its first record
    cat >r-label.sh <<'EOF'
n=0
while IFS= read -r l; do
    case $l in
    '#'*) echo "$l" ;;
    *) n=$((n + 1)); [ "$n" -eq 1 ] && sleep "$1"; echo "${l%%,*},0.99" ;;
    esac
done
EOF
    # r-late.py GO: passes its first line (infer's probe) back at once, reads
    # every record as it comes (each one logged to GO.log), but answers
    # ('LABEL,0.99', markers passed back) only once the file GO exists
    cat >r-late.py <<'EOF'
import os, select, sys
go, fd = sys.argv[1], sys.stdin.fileno()
log, out = open(go + '.log', 'a'), sys.stdout
buf, pending, first = b'', [], True
while True:
    if select.select([fd], [], [], 0.05)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            s = line.decode()
            if first:
                out.write(s + '\n')
                out.flush()
                first = False
            elif s.startswith('#'):
                pending.append(s)
            else:
                log.write(s + '\n')
                log.flush()
                pending.append(s.split(',')[0] + ',0.99')
    if pending and os.path.exists(go):
        out.write(''.join(p + '\n' for p in pending))
        out.flush()
        pending = []
EOF
    # r-const ANSWER: ANSWER for every record
    cat >r-const.sh <<'EOF'
while IFS= read -r l; do
    case $l in '#'*) echo "$l" ;; *) echo "$1" ;; esac
done
EOF
    # r-up CMD: passes infer's first line (its probe marker) back, as a
    # co-process that is up does, then runs CMD (sh -c) in its place
    cat >r-up.sh <<'EOF'
[ -z "$2" ] || echo start >>"$2"
IFS= read -r l
printf '%s\n' "$l"
exec sh -c "$1"
EOF
}

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    F=$BATS_FILE_TMPDIR
    A=$F/A B=$F/B C=$F/C O=$F/O E=$F/E
    [[ -f $A/manifest.yaml && -f $B/manifest.yaml ]] || fail "setup_file could not train the fixtures"
    cp "$F/test.csv" test.csv
    # a number for the names of this test's processes (pgrep -f)
    U=$BATS_ROOT_PID$BATS_SUITE_TEST_NUMBER
    INF_PID= CAT_PID=
}

teardown() {
    if [[ -n ${INF_PID:-} ]]; then kill "$INF_PID" 2>/dev/null || true; fi
    # the sleeps of a co-process of this test, if infer left them
    local p
    for p in $(pgrep -f "sleep 6[01]\\.$U\$"); do kill "$p" 2>/dev/null || true; done
    if [[ -n ${CAT_PID:-} ]]; then kill "$CAT_PID" 2>/dev/null || true; fi
}

# ---- helpers ------------------------------------------------------------------

# rsh NAME ARG...: a --forward command running $F/r-NAME.sh
rsh() {
    local name=$1
    shift
    printf "sh '%s'" "$F/r-$name.sh"
    local a
    for a in "$@"; do printf " '%s'" "$a"; done
}

# tier_count FILE TIER: the records of FILE answered by TIER
tier_count() {
    awk -F, -v t="$2" '!/^#/ && $3 == t { n++ } END { print n + 0 }' "$1"
}

# below FILE T: the records of a 'pred,confidence' FILE with confidence < T
below() {
    awk -F, -v t="$2" '!/^#/ && $2 + 0 < t + 0 { n++ } END { print n + 0 }' "$1"
}

# check_lines OUT PLAIN [REMOTE]: OUT, '#' lines aside, has one
# 'pred,confidence,tier' line with a known tier for each record of PLAIN,
# in order; every line not answered remotely carries PLAIN's answer for its
# record (the local one), byte for byte.  REMOTE: '=P,C' (every remote
# answer is P,C, C within 1e-6: 0.9 comes back as 0.899999976) or a file of 'pred,confidence' lines, one per record
# (the remote lines agree with its line for their record, the confidence
# within 1e-6).
check_lines() {
    local out=$1 plain=$2 rs=${3:-} rf=/dev/null
    if [[ -n $rs && $rs != =* ]]; then rf=$rs; fi
    awk -F, -v rs="$rs" '
        FILENAME == ARGV[1] { if (!/^#/) p[++np] = $0; next }
        FILENAME == ARGV[2] { if (!/^#/) r[++nr] = $0; next }
        /^#/ { next }
        {
            i++
            if (NF != 3 || $3 !~ /^(local|remote|fallback:(timeout|unreachable|shed|bad-answer))$/) {
                print "line " FNR ": " $0; bad = 1; next
            }
            if ($3 != "remote") {
                if ($1 "," $2 != p[i]) { print "record " i ": " $0 ", the local answer is " p[i]; bad = 1 }
                next
            }
            if (rs == "")
                next
            want = rs ~ /^=/ ? substr(rs, 2) : r[i]
            split(want, x, ",")
            d = x[2] - $2
            if (x[1] != $1 || d > 1e-6 || -d > 1e-6) { print "record " i ": " $0 ", the remote gives " want; bad = 1 }
        }
        END { if (i != np) { print i " records answered, " np " expected"; bad = 1 } exit bad }
    ' "$plain" "$rf" "$out"
}

# halves FILE WHEN [N]: FILE on stdout, its first N lines (default half of
# them), then the rest once the shell command WHEN succeeds (tried every
# 0.05 s, for at most 60 s): the second half comes when the co-process has
# got somewhere, on an idle or a loaded machine alike.  (infer reads whole
# batches: a first part that is not a multiple of --batch waits for more.)
halves() {
    local n i=1200
    n=${3:-$(($(wc -l <"$1") / 2))}
    head -n "$n" "$1"
    until eval "$2"; do
        ((i-- > 0)) || { echo "halves: '$2' never came true" >&2; break; }
        sleep 0.05
    done
    tail -n +$((n + 1)) "$1"
}

# lines_in FILE: its lines, 0 when it is not there
lines_in() { if [[ -e $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# slowly FILE: FILE on stdout, its first half, a pause of ${PAUSE:-0.5} s,
# then the rest (so that infer is still reading while its co-process is
# restarted; with a small --batch, or the first half waits in a batch)
slowly() {
    local n
    n=$(wc -l <"$1")
    head -n $((n / 2)) "$1"
    sleep "${PAUSE:-0.5}"
    tail -n +$((n / 2 + 1)) "$1"
}

need_python() {
    need python3 python3
}

# json FILE EXPR: python3 prints EXPR of the JSON in FILE (bound to j)
json() {
    python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# near A B TOL: |A - B| <= TOL
near() {
    awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; if (d > t) { print a " vs " b; exit 1 } }'
}

# no_process PATTERN: no process whose command line matches PATTERN
no_process() {
    local p n=30
    # a process that was sent SIGTERM may take a moment to go
    while p=$(pgrep -af -- "$1"); do
        ((n-- > 0)) || fail "left behind: $p"
        sleep 0.1
    done
}

# ---- forwarding -----------------------------------------------------------------

@test "--forward: records below the threshold answered by 'infer -m B', the rest by A" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "${#lines[@]}" 150
    assert_equal "$stderr" ""
    run -0 check_lines out.txt "$F/A.out" "$F/B.out"
    # the routing: exactly the records A is less than 0.7 sure of went out
    local n
    n=$(below "$F/A.out" 0.7)
    ((n >= 20 && n <= 130)) || fail "the fixture has $n records below 0.7: not a mix"
    assert_equal "$(tier_count out.txt remote)" "$n"
    assert_equal "$(tier_count out.txt local)" $((150 - n))
    run -0 awk -F, 'NR == FNR { c[FNR] = $2; next }
        ((c[FNR] < 0.7) != ($3 == "remote")) { print FNR ": " c[FNR] " -> " $0; bad = 1 }
        END { exit bad }' "$F/A.out" out.txt
}

@test "--forward: '#' lines stay in place around local and forwarded records" {
    awk 'NR == 1 { print "# head"; print "#!ckpt 3" }
         { print }
         NR % 5 == 0 { print "# after " NR }
         NR % 7 == 0 { print "#"; print "#  two  " NR }
         END { print "# tail" }' test.csv >mixed.csv
    infer -m "$A" <mixed.csv >plain.txt
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0.7 <mixed.csv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$(wc -l <out.txt)" "$(wc -l <mixed.csv)"
    # the same '#' lines on the same line numbers
    run -0 diff <(grep -n '^#' mixed.csv) <(grep -n '^#' out.txt)
    run -0 check_lines out.txt plain.txt "$F/B.out"
    (($(tier_count out.txt remote) > 0)) || fail "nothing was forwarded"
}

@test "--forwarded FILE: exactly the records forwarded, as they came, appended; a cut line is ended" {
    # tab-separated with trailing zeros and '#' lines: the bytes as read, no '#' line
    tr , '\t' <test.csv | sed -E 's/(\.[0-9]+)(\t|$)/\100\2/g' |
        awk '{ print } NR % 9 == 0 { print "# note " NR }' >test.tsv
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 7 --forward "infer -m '$B'" \
        --threshold 0.7 --forwarded fw.tsv <test.tsv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$stderr" ""
    # the lines of the records A is less than 0.7 sure of, in order
    run -0 diff fw.tsv <(grep -v '^#' test.tsv | paste -d '|' - "$F/A.out" |
        awk -F'|' '{ split($2, a, ","); if (a[2] + 0 < 0.7) print $1 }')
    local n
    n=$(below "$F/A.out" 0.7)
    ((n >= 20 && n <= 130)) || fail "the fixture has $n records below 0.7: not a mix"
    assert_equal "$(wc -l <fw.tsv)" "$n"
    # a second run appends; every record forwarded: the whole stream
    timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 1.01 --forwarded fw.tsv \
        <test.tsv >/dev/null
    assert_equal "$(wc -l <fw.tsv)" $((n + 150))
    run -0 diff <(tail -n 150 fw.tsv) <(grep -v '^#' test.tsv)
    # a file whose last line a killed run cut short: ended first, with a warning
    printf '0\t0.12' >cut.tsv
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" \
        --threshold 1.01 --forwarded cut.tsv <test.tsv
    assert_regex "$stderr" '^infer: --forwarded cut.tsv: its last line had no newline'
    assert_equal "$(head -n 1 cut.tsv)" "$(printf '0\t0.12')"
    run -0 diff <(tail -n +2 cut.tsv) <(grep -v '^#' test.tsv)
    # no --forward; stdout; a directory; no name
    run -2 --separate-stderr infer -m "$A" --forwarded x <test.csv
    assert_regex "$stderr" '--forwarded needs --forward CMD'
    run -2 --separate-stderr infer -m "$A" --forward cat --threshold 0.5 --forwarded - <test.csv
    assert_regex "$stderr" 'stdout carries the answers'
    run -2 --separate-stderr infer -m "$A" --forward cat --threshold 0.5 --forwarded '' <test.csv
    assert_regex "$stderr" 'empty file name'
    mkdir d
    run -1 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0.5 \
        --forwarded d <test.csv
    assert_regex "$stderr" '^infer: --forwarded d: Is a directory'
    assert_output ''
    # a FIFO nothing reads: an error at once, not a wait
    mkfifo nobody
    run -1 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0.5 \
        --forwarded nobody <test.csv
    assert_regex "$stderr" '^infer: --forwarded nobody: a FIFO that nothing reads'
    # a FIFO with a reader (this shell, on fd 8: the records fit in the
    # pipe's buffer) gets the records
    (($(wc -c <test.csv) < 60000)) || fail "test.csv is larger than a pipe holds"
    exec 8<>nobody
    timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 1.01 --forwarded nobody \
        <test.csv >/dev/null || fail "infer with a FIFO for --forwarded failed"
    head -c "$(wc -c <test.csv)" <&8 >got.tsv
    exec 8<&-
    run -0 diff got.tsv test.csv
}

@test "--threshold 0 keeps every record local, 1.01 forwards every one" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0 <test.csv
    printf '%s\n' "${lines[@]}" >out0.txt
    assert_equal "$(tier_count out0.txt local)" 150
    run -0 diff <(cut -d, -f1,2 out0.txt) "$F/A.out"
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 1.01 <test.csv
    printf '%s\n' "${lines[@]}" >out1.txt
    assert_equal "$(tier_count out1.txt remote)" 150
    run -0 check_lines out1.txt "$F/A.out" "$F/B.out"
}

@test "the co-process reads each forwarded line as it came, and '#!flush' after each batch and every 64 records" {
    # tab-separated, with trailing zeros: the remote must see the bytes read
    tr , '\t' <test.csv | sed -E 's/(\.[0-9]+)(\t|$)/\100\2/g' >test.tsv
    grep -q '00	' test.tsv || fail "test.tsv: $(head -n1 test.tsv)"
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 100 \
        --forward "tee -a '$PWD/seen.log' | infer -m '$B'" --threshold 1.01 <test.tsv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$(tier_count out.txt remote)" 150
    # first the probe, then the records in order, a marker at least every
    # 64 records and after each batch of 100
    assert_equal "$(head -n1 seen.log)" "#!flush"
    run -0 diff <(grep -v '^#' seen.log) test.tsv
    run -0 awk '/^#!flush$/ { if (n > 64) { print "a run of " n " records"; bad = 1 } n = 0; next }
        /^#/ { print "line " NR ": " $0; bad = 1 }
        { n++; r++; if (r == 100) want = NR + 1 }
        want && NR == want && !/^#!flush$/ { print "no marker after record 100"; bad = 1 }
        END { if (n) { print n " records after the last marker"; bad = 1 } exit bad }' seen.log
}

@test "a co-process that does not pass '#!flush' back: its answers count, and it gets no more markers" {
    # the second half once infer wrote out the first (its '#!flush' line
    # came out after the first half's answers): by then it has learned
    # from the co-process's first line that markers do not come back
    (($(head -n 75 "$F/A.out" | below /dev/stdin 0.7) > 0)) || fail "no record of the first half is forwarded"
    { head -n 75 test.csv; echo '#!flush'; tail -n +76 test.csv; } >flushed.csv
    local rc=0
    timeout 30 infer -m "$A" --batch 10 --forward "tee -a seen.log | $(rsh noecho)" \
        --threshold 0.7 < <(halves flushed.csv 'grep -qx "#!flush" out.all' 76) >out.all 2>err ||
        rc=$?
    assert_equal "$rc" 0
    grep -v '^#' out.all >out.txt
    assert_equal "$(grep -c '^#' out.all)" 1
    run -0 check_lines out.txt "$F/A.out" =0,0.9
    assert_equal "$(tier_count out.txt remote)" "$(below "$F/A.out" 0.7)"
    # after the pause (half the records), no marker is sent any more
    local first_late
    first_late=$(awk -F, 'NR > 75 && $2 < 0.7 { print NR; exit }' "$F/A.out")
    [[ -n $first_late ]] || fail "no record of the second half is forwarded"
    run -0 awk -v want="$(sed -n "${first_late}p" test.csv)" '
        $0 == want { late = 1 } late && /^#/ { print "marker after the pause: line " NR; bad = 1 }
        END { exit bad || !late }' seen.log
}

@test "a co-process answering all K probabilities ('infer --proba')" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B' --proba" --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" "$F/B.out"
    assert_equal "$(tier_count out.txt remote)" "$(below "$F/A.out" 0.7)"
}

@test "a co-process answering 'pred,confidence,tier' (a chain of tiers): the extra field is ignored" {
    run -0 --separate-stderr timeout 30 infer -m "$B" --forward "infer -m '$C'" --threshold 0.9 <test.csv
    printf '%s\n' "${lines[@]}" >chain.txt
    run -0 --separate-stderr timeout 30 infer -m "$A" \
        --forward "infer -m '$B' --forward \"infer -m '$C'\" --threshold 0.9" --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" <(cut -d, -f1,2 chain.txt)
    assert_equal "$(tier_count out.txt remote)" "$(below "$F/A.out" 0.7)"
}

@test "two classes: a remote 'infer' answer '0,1' is class 0 with confidence 1" {
    # with K = 2, '0,1' could also be read as the two probabilities; but it
    # is what 'infer -m CK' prints for a record of class 0 it is sure of
    printf '%s\n' 'input: 4' 'classes: 2' 'layers:' '  - {dense: 8, activation: relu}' \
        '  - {dense: 2}' 'optimizer: {type: sgd, lr: 0.1, momentum: 0.9}' 'batch: 4' 'seed: 1' >bin.yaml
    awk -F, -v OFS=, '{ $1 = $1 == 0 ? 0 : 1 } 1' "$F/clean.csv" >bclean.csv
    awk -F, -v OFS=, '{ $1 = $1 == 0 ? 0 : 1 } 1' test.csv >btest.csv
    sgd-train -q -m bin.yaml -o BIN <bclean.csv >/dev/null || fail "sgd-train failed"
    infer -m BIN <btest.csv >direct.txt
    grep -qx '0,1' direct.txt || fail "the fixture never prints '0,1': the test would not test it"
    run -0 --separate-stderr timeout 30 infer -m BIN --forward "infer -m BIN" --threshold 1.01 <btest.csv
    run -0 diff direct.txt <(printf '%s\n' "${lines[@]}" | cut -d, -f1,2)
    # and the same from a script, for '0,1' and '0,0.9995' (which sum to 1
    # within 1e-3, as two probabilities would)
    run -0 --separate-stderr timeout 30 infer -m BIN --forward "$(rsh const 0,1)" --threshold 1.01 <btest.csv
    assert_equal "$(printf '%s\n' "${lines[@]}" | sort -u)" "0,1,remote"
    run -0 --separate-stderr timeout 30 infer -m BIN --forward "$(rsh const 0,0.9995)" --threshold 1.01 <btest.csv
    assert_equal "$(printf '%s\n' "${lines[@]}" | sort -u)" "0,0.999499977,remote"
}

# ---- faults of the co-process ---------------------------------------------------

@test "a co-process that exits mid-stream: answered records remote, the rest fall back, exit 0" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 10 --forward "$(rsh exit 5)" --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" =0,0.9
    local r u
    r=$(tier_count out.txt remote) u=$(tier_count out.txt fallback:unreachable)
    ((r >= 1)) || fail "no remote answer (the co-process answers 5, then exits)"
    ((u >= 1)) || fail "no record fell back as unreachable"
    assert_equal $((r + u)) "$(below "$F/A.out" 0.7)"
}

@test "a co-process that exits while the input goes on is restarted, with a line on stderr" {
    # the second half once the co-process has been started again
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 10 \
        --forward "$(rsh exit 3 "$PWD/starts")" --threshold 0.7 --eval --stats-json s.json \
        < <(halves test.csv '(($(lines_in starts) >= 2))')
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" =0,0.9
    # it answers 3 records, then exits; restarted, it answers again
    (($(tier_count out.txt remote) > 3)) || fail "no answer after a restart"
    (($(tier_count out.txt fallback:unreachable) >= 1)) || fail "no record fell back"
    assert_regex "$stderr" "infer: forward: 'sh '[^']*/r-exit\\.sh' '3' '[^']*/starts'' (exited with status 0|was stopped) \\(its output ended\\); restarting in 0\\.1 s"
    need_python
    run -0 json s.json 'j["restarts"]'
    ((output >= 1)) || fail "restarts: $output"
}

@test "a co-process that hangs: fallback:timeout after --deadline, infer ends at once, nothing left behind" {
    local t0
    t0=$(date +%s.%N)
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "$(rsh up "sleep 60.$U | sleep 61.$U")" \
        --threshold 0.7 --deadline 200 <test.csv 3>&-
    local dt
    dt=$(elapsed_since "$t0")
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    assert_equal "$(tier_count out.txt remote)" 0
    assert_equal $(($(tier_count out.txt fallback:timeout) + $(tier_count out.txt fallback:shed))) \
        "$(below "$F/A.out" 0.7)"
    awk -v t="$dt" 'BEGIN { exit !(t < 3) }' || fail "infer took $dt s"
    # the whole process group is gone: sh and both sleeps
    no_process "sleep 6[01]\\.$U\$"
}

@test "a co-process that ignores SIGTERM is killed all the same" {
    local t0 dt
    t0=$(date +%s.%N)
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "$(rsh up "trap '' TERM; sleep 60.$U")" \
        --threshold 0.7 --deadline 200 <test.csv 3>&-
    dt=$(elapsed_since "$t0")
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    assert_equal "$(tier_count out.txt fallback:timeout)" "$(below "$F/A.out" 0.7)"
    awk -v t="$dt" 'BEGIN { exit !(t < 3) }' || fail "infer took $dt s"
    no_process "sleep 60\\.$U\$"
}

@test "a co-process silent for max(10 x deadline, 2 s) with records in flight is killed and restarted" {
    local t0
    t0=$(date +%s.%N)
    # the second half once it has been killed and started again
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 10 \
        --forward "$(rsh up "sleep 60.$U" "$PWD/starts")" --threshold 0.7 --deadline 100 --eval \
        --stats-json s.json < <(halves test.csv '(($(lines_in starts) >= 2))') 3>&-
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    assert_equal "$(tier_count out.txt remote)" 0
    [[ $stderr == *"infer: forward: '$(rsh up "sleep 60.$U" "$PWD/starts")' was stopped (no answer for 2.0 s); restarting in 0.1 s"* ]] ||
        fail "no restart reported: $stderr"
    no_process "sleep 60\\.$U\$"
    need_python
    run -0 json s.json 'j["restarts"]'
    assert_equal "$output" 1
}

@test "a co-process slow to come up: its records wait for it; deadlines start at its first line" {
    # 1 s to start (ssh connecting, a model loading), then answers at once:
    # with --deadline 200 every forwarded record still gets its remote answer
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "sleep 1; infer -m '$B'" \
        --threshold 0.7 --deadline 200 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" "$F/B.out"
    assert_equal "$(tier_count out.txt remote)" "$(below "$F/A.out" 0.7)"
    assert_equal "$stderr" ""
}

@test "a co-process that never comes up: unreachable after --start-timeout, and stderr says why and how many" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "sleep 60.$U" --threshold 0.7 \
        --deadline 100 --start-timeout 0.5 <test.csv 3>&-
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    local n
    n=$(below "$F/A.out" 0.7)
    assert_equal "$(tier_count out.txt fallback:unreachable)" "$n"
    assert_regex "$stderr" "infer: forward: 'sleep 60\\.$U' was stopped \\(no first answer within --start-timeout 0\\.5 s\\)"
    assert_regex "$stderr" "infer: forward: $n of $n forwarded records fell back to the local answer \\(0 timed out, $n unreachable, 0 shed, 0 bad answers\\)"
    no_process "sleep 60\\.$U\$"
    run -2 --separate-stderr infer -m "$A" --start-timeout 1 <test.csv
    assert_regex "$stderr" 'needs --forward CMD'
    run -2 --separate-stderr infer -m "$A" --forward cat --start-timeout 0 <test.csv
    assert_regex "$stderr" "--start-timeout: '0' is not a number of seconds"
}

@test "a run where most forwarded records time out says so on stderr" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "$(rsh slow 0.3)" --threshold 0.7 \
        --deadline 50 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    assert_regex "$stderr" "infer: forward: [0-9]+ of $(below "$F/A.out" 0.7) forwarded records fell back to the local answer \\([0-9]+ timed out, 0 unreachable, [0-9]+ shed, 0 bad answers\\); a longer --deadline or a larger --window may help"
}

@test "a co-process answering garbage: fallback:bad-answer and one warning" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "$(rsh banana)" --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    assert_equal "$(tier_count out.txt fallback:bad-answer)" "$(below "$F/A.out" 0.7)"
    assert_regex "$stderr" "answered 'banana', not 'pred,confidence' or 3 probabilities"
    assert_equal "$(grep -c banana <<<"$stderr")" 1
}

@test "answers out of range are bad answers: class K, confidence above 1, too few fields" {
    local a
    for a in 3,0.9 0,1.5 -1,0.9 0.5,0.9 0 0,-0.1; do
        run -0 --separate-stderr timeout 30 infer -m "$A" --forward "$(rsh const "$a")" --threshold 0.7 <test.csv
        printf '%s\n' "${lines[@]}" >out.txt
        run -0 check_lines out.txt "$F/A.out"
        assert_equal "$(tier_count out.txt fallback:bad-answer)" "$(below "$F/A.out" 0.7)"
    done
}

@test "a co-process answering too few lines: its batch falls back as bad-answer, the next ones are fine" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 10 --forward "$(rsh drop 2)" --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" =0,0.9
    # the batch of 10 records holding the 2nd forwarded record is bad, every
    # other forwarded record is remote
    local b
    b=$(awk -F, '$2 < 0.7 && ++n == 2 { print int((NR - 1) / 10); exit }' "$F/A.out")
    run -0 awk -F, -v b="$b" '
        NR == FNR { fwd[FNR] = $2 < 0.7; next }
        {
            want = !fwd[FNR] ? "local" : int((FNR - 1) / 10) == b ? "fallback:bad-answer" : "remote"
            if ($3 != want) { print FNR ": " $0 ", expected " want; bad = 1 }
        }
        END { exit bad }' "$F/A.out" out.txt
    assert_regex "$stderr" "answered fewer lines than it was sent records"
}

@test "a co-process answering too many lines is stopped: its records fall back as unreachable" {
    # the second half once the co-process was stopped: infer is still
    # reading then, and restarts it, on an idle or a loaded machine alike
    # (--deadline 30000: the extra lines, not the clock, end every forward)
    local rc=0 stderr
    timeout 60 infer -m "$A" --batch 10 --forward "$(rsh dup)" --threshold 0.7 --deadline 30000 \
        < <(halves test.csv "grep -q 'answered more lines' err") >out.txt 2>err || rc=$?
    assert_equal "$rc" 0
    stderr=$(cat err)
    run -0 check_lines out.txt "$F/A.out"
    assert_equal "$(tier_count out.txt remote)" 0
    assert_equal "$(tier_count out.txt fallback:unreachable)" "$(below "$F/A.out" 0.7)"
    assert_regex "$stderr" "answered more lines than it was sent records\\); restarting in"
}

@test "a co-process that cannot be started: fallback:unreachable, restarts on stderr, exit 0" {
    # the second half once it has failed to start three times
    local cmd="echo >>'$PWD/starts'; exec /nonexistent/x"
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 10 --forward "$cmd" \
        --threshold 0.7 --eval --stats-json s.json < <(halves test.csv '(($(lines_in starts) >= 3))')
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    assert_equal "$(tier_count out.txt fallback:unreachable)" "$(below "$F/A.out" 0.7)"
    [[ $stderr == *"infer: forward: '$cmd' exited with status 127 (its output ended); restarting in 0.1 s"* ]] ||
        fail "no restart reported: $stderr"
    # the backoff doubles at each failure in a row: 0.1, 0.2, 0.4 s ...
    run -0 bash -c "grep -o 'restarting in [0-9.]* s' <<<\"\$1\" | head -n 3 | cut -d' ' -f3 | paste -sd' '" _ "$stderr"
    assert_output '0.1 0.2 0.4'
    need_python
    run -0 json s.json 'j["restarts"] >= 1 and j["tiers"]["fallback:unreachable"]["records"]'
    assert_equal "$output" "$(below "$F/A.out" 0.7)"
}

@test "--window 1 with a co-process slower than --deadline: the records beyond it are shed" {
    # a full window waits while its oldest record may still be answered in
    # time; this one is late after 100 ms, its answer comes after 300
    run -0 --separate-stderr timeout 30 infer -m "$A" --window 1 --deadline 100 --forward "$(rsh slow 0.3)" \
        --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" =0,0.9
    local s
    s=$(tier_count out.txt fallback:shed)
    ((s >= 1)) || fail "nothing shed"
    assert_equal $((s + $(tier_count out.txt remote) + $(tier_count out.txt fallback:timeout))) \
        "$(below "$F/A.out" 0.7)"
}

@test "--window 1 with a co-process that keeps up: the records wait for room, none is shed" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --window 1 --forward "$(rsh slow 0.01)" \
        --threshold 0.7 <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" =0,0.9
    assert_equal "$(tier_count out.txt remote)" "$(below "$F/A.out" 0.7)"
}

@test "records that timed out hold their place in the window until the co-process answers or restarts" {
    # --window 4, a co-process that never answers, --deadline 1000: the
    # first 4 forwarded records time out, and every later one is shed, even
    # after a pause longer than the deadline (the whole run, about 3 s, well
    # inside the 10 s of silence that restart a co-process, even on a loaded
    # machine)
    run -0 --separate-stderr timeout 60 infer -m "$A" --batch 10 --window 4 --forward "$(rsh up "sleep 60.$U")" \
        --threshold 0.7 --deadline 1000 < <(PAUSE=1.5 slowly test.csv) 3>&-
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    assert_equal "$(tier_count out.txt fallback:timeout)" 4
    assert_equal "$(tier_count out.txt fallback:shed)" $(($(below "$F/A.out" 0.7) - 4))
    no_process "sleep 60\\.$U\$"
}

@test "a co-process that stays after its input ended is stopped after 2 s" {
    local t0 dt
    t0=$(date +%s.%N)
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "$(rsh linger "60.$U")" --threshold 0.7 <test.csv 3>&-
    dt=$(elapsed_since "$t0")
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" =0,0.9
    assert_equal "$(tier_count out.txt remote)" "$(below "$F/A.out" 0.7)"
    awk -v t="$dt" 'BEGIN { exit !(t >= 1.8 && t < 4.5) }' || fail "infer took $dt s (2 s of grace expected)"
    no_process "sleep 60\\.$U\$"
}

@test "late answers are discarded and do not shift the answers after them" {
    # the co-process answers each record with its label, but only once the
    # file go exists: made when every record of the first half has reached
    # it and has waited longer than --deadline 200, so that they all time
    # out; the second half gets the right answers
    local first
    first=$(head -n 70 "$F/A.out" | below /dev/stdin 0.7)
    run -0 --separate-stderr timeout 30 infer -m "$A" --batch 10 --deadline 200 \
        --forward "python3 '$F/r-late.py' '$PWD/go'" --threshold 0.7 \
        < <(halves test.csv "((\$(lines_in go.log) >= $first)) && sleep 0.4 && touch go" 70)
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out"
    local r t
    r=$(tier_count out.txt remote) t=$(tier_count out.txt fallback:timeout)
    ((r >= 5 && t >= 5)) || fail "$r remote, $t timed out"
    assert_equal $((r + t)) "$(below "$F/A.out" 0.7)"
    run -0 awk -F, 'NR == FNR { y[FNR] = $1; next }
        $3 == "remote" && ($1 != y[FNR] || $2 != "0.99000001") { print FNR ": " $0 ", label " y[FNR]; bad = 1 }
        END { exit bad }' test.csv out.txt
}

@test "a reader that goes away: infer ends quietly, and its co-process with it" {
    mk_noisy_data 30000 3 >big.csv
    run -0 bash -c 'infer -m "$1" --forward "$3" --threshold 0.7 --deadline 200 <big.csv 2>err.txt 3>&- |
        head -n1; s=("${PIPESTATUS[@]}"); echo "status ${s[0]}"' _ "$A" "$U" "$(rsh up "sleep 60.$U")"
    assert_regex "${lines[0]}" '^[0-2],[0-9.e-]+,(local|fallback:timeout)$'
    assert_regex "${lines[1]}" '^status (0|141)$'
    run -0 cat err.txt
    assert_output ""
    no_process "sleep 60\\.$U\$"
}

@test "SIGTERM or SIGINT to infer: its co-process goes too" {
    local sig n
    for sig in TERM INT; do
        infer -m "$A" --forward "sleep 60.$U" --threshold 0.7 --deadline 5000 <test.csv >/dev/null 2>err.txt 3>&- &
        INF_PID=$!
        n=50
        until pgrep -f "sleep 60\\.$U\$" >/dev/null; do ((n-- > 0)) || fail "no co-process"; sleep 0.1; done
        kill -"$sig" "$INF_PID"
        wait "$INF_PID" || true
        INF_PID=
        no_process "sleep 60\\.$U\$"
    done
}

# ---- --forward-fraction ------------------------------------------------------

@test "--forward-fraction F on a calibration file equal to the input forwards about F of it" {
    local f want n
    for f in 0.3 0.5; do
        run -0 --separate-stderr timeout 30 infer -m "$A" -v --forward "infer -m '$B'" \
            --forward-fraction "$f" --calibration "$F/test.csv" <test.csv
        printf '%s\n' "${lines[@]}" >out.txt
        run -0 check_lines out.txt "$F/A.out" "$F/B.out"
        n=$(tier_count out.txt remote)
        want=$(awk -v f="$f" 'BEGIN { printf "%d", f * 150 + 0.5 }')
        ((n >= want - 3 && n <= want + 3)) || fail "F=$f: $n of 150 forwarded"
        assert_regex "$stderr" "infer: --forward-fraction $f: threshold [0-9.e-]+ \\(maxprob\\) forwards $n of the 150 records of .*test\\.csv"
    done
}

@test "--forward-fraction 0 forwards nothing, 1 forwards everything" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" \
        --forward-fraction 0 --calibration "$F/test.csv" <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$(tier_count out.txt local)" 150
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" \
        --forward-fraction 1 --calibration "$F/test.csv" <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$(tier_count out.txt remote)" 150
}

@test "--forward-fraction with another sample of the same data forwards roughly F" {
    mk_noisy_data 600 4242 >cal.csv
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" \
        --forward-fraction 0.4 --calibration cal.csv <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    local n
    n=$(tier_count out.txt remote)
    ((n >= 40 && n <= 80)) || fail "$n of 150 forwarded, about 60 expected"
}

@test "--calibration: a missing file, or one without records: exit 1" {
    run -1 --separate-stderr infer -m "$A" --forward "infer -m '$B'" --forward-fraction 0.3 \
        --calibration nosuch.csv <test.csv
    assert_regex "$stderr" "nosuch\\.csv"
    printf '# nothing\n' >empty.csv
    run -1 --separate-stderr infer -m "$A" --forward "infer -m '$B'" --forward-fraction 0.3 \
        --calibration empty.csv <test.csv
    assert_regex "$stderr" "empty\\.csv: no records"
}

# ---- criteria -----------------------------------------------------------------

# crit_check CRIT AWK-EXPR: the records forwarded with --criterion CRIT are
# those whose criterion, computed by AWK-EXPR from the probabilities p[1..3]
# of A, is below a threshold halfway between two neighbouring values near
# the 40% quantile
crit_check() {
    awk -F, "{ for (k = 1; k <= NF; k++) p[k] = \$k; printf \"%.9f\\n\", $2 }" "$F/A.proba" >crit.txt
    # the widest gap between the 45th and the 75th smallest values
    local t want
    read -r t want < <(sort -g crit.txt | awk '{ v[NR] = $1 }
        END { for (i = 45; i < 75; i++) if (v[i + 1] - v[i] > g) { g = v[i + 1] - v[i]; k = i }
              printf "%.9f %d\n", (v[k] + v[k + 1]) / 2, k }')
    CRIT_T=$t
    run -0 --separate-stderr timeout 30 infer -m "$A" --criterion "$1" --forward "infer -m '$B'" --threshold "$t" <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" "$F/B.out"
    run -0 awk -F, -v t="$t" 'NR == FNR { c[FNR] = $1; next }
        ((c[FNR] < t) != ($3 == "remote")) { print FNR ": criterion " c[FNR] ", threshold " t ": " $0; bad = 1 }
        END { exit bad }' crit.txt out.txt
    assert_equal "$(tier_count out.txt remote)" "$want"
}

@test "--criterion margin forwards the records whose top two probabilities are closest" {
    crit_check margin '(p[1] >= p[2] && p[1] >= p[3] ? p[1] - (p[2] > p[3] ? p[2] : p[3]) : \
        p[2] >= p[3] ? p[2] - (p[1] > p[3] ? p[1] : p[3]) : p[3] - (p[1] > p[2] ? p[1] : p[2]))'
}

@test "--criterion entropy forwards the records of highest entropy (1 - H/log K)" {
    crit_check entropy '1 + ((p[1] > 0 ? p[1] * log(p[1]) : 0) + (p[2] > 0 ? p[2] * log(p[2]) : 0) + \
        (p[3] > 0 ? p[3] * log(p[3]) : 0)) / log(3)'
}

@test "--criterion maxprob is the default" {
    crit_check maxprob '(p[1] > p[2] ? (p[1] > p[3] ? p[1] : p[3]) : (p[2] > p[3] ? p[2] : p[3]))'
    cp out.txt crit.out
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold "$CRIT_T" <test.csv
    run -0 diff crit.out <(printf '%s\n' "${lines[@]}")
}

@test "the criteria forward different records" {
    local c
    for c in maxprob margin entropy; do
        infer -m "$A" --criterion "$c" --forward "infer -m '$B'" --forward-fraction 0.3 \
            --calibration "$F/test.csv" <test.csv | awk -F, '$3 == "remote" { print NR }' >"$c.set"
    done
    ! cmp -s maxprob.set margin.set || ! cmp -s maxprob.set entropy.set ||
        fail "margin and entropy forward the very records maxprob does"
}

# ---- ensembles and early exits ------------------------------------------------

# mean_proba WA WB: the weighted mean of A's and B's probabilities
mean_proba() {
    paste -d, "$F/A.proba" "$F/B.proba" | awk -F, -v a="$1" -v b="$2" '{
        s = a + b
        printf "%.9g,%.9g,%.9g\n", (a * $1 + b * $4) / s, (a * $2 + b * $5) / s, (a * $3 + b * $6) / s
    }'
}

# within TOL X Y: files of numbers, line by line, field by field
within() {
    awk -F, -v tol="$1" 'NR == FNR { a[FNR] = $0; n = FNR; next }
        {
            m = FNR
            k = split(a[FNR], x, ",")
            if (k != NF) { print FNR ": " a[FNR] " vs " $0; bad = 1; next }
            for (i = 1; i <= NF; i++) { d = x[i] - $i; if (d > tol || -d > tol) { print FNR ": " a[FNR] " vs " $0; bad = 1; next } }
        }
        END { if (m != n) { print n " vs " m " lines"; bad = 1 } exit bad }' "$2" "$3"
}

@test "an ensemble averages its members' probabilities" {
    mean_proba 1 1 >mean.txt
    run -0 --separate-stderr infer -m "$A" -m "$B" --proba <test.csv
    printf '%s\n' "${lines[@]}" >ens.txt
    run -0 within 1e-6 mean.txt ens.txt
    # and 'pred,confidence' is its argmax and max
    run -0 --separate-stderr infer -m "$A" -m "$B" <test.csv
    printf '%s\n' "${lines[@]}" >pred.txt
    run -0 awk -F, 'NR == FNR { b = 1; for (k = 2; k <= 3; k++) if ($k > $b) b = k; p[FNR] = (b - 1) "," $b; next }
        $0 != p[FNR] { print FNR ": " $0 " vs " p[FNR]; bad = 1 } END { exit bad }' ens.txt pred.txt
}

@test "--weights: normalised weights; 1,0 is the first model alone" {
    mean_proba 1 3 >mean.txt
    run -0 --separate-stderr infer -m "$A" -m "$B" --weights 1,3 --proba <test.csv
    run -0 within 1e-6 mean.txt <(printf '%s\n' "${lines[@]}")
    run -0 --separate-stderr infer -m "$A" -m "$B" --weights 2,6 --proba <test.csv
    run -0 within 1e-6 mean.txt <(printf '%s\n' "${lines[@]}")
    run -0 --separate-stderr infer -m "$A" -m "$B" --weights 1,0 --proba <test.csv
    run -0 within 1e-6 "$F/A.proba" <(printf '%s\n' "${lines[@]}")
    run -0 --separate-stderr infer -m "$A" -m "$B" --weights 0,1 <test.csv
    run -0 within 1e-6 "$F/B.out" <(printf '%s\n' "${lines[@]}")
}

@test "--anytime: threshold 0 stops at the first model, 1.01 asks every one" {
    run -0 --separate-stderr infer -m "$A" -m "$B" --anytime --exit-threshold 0 --proba <test.csv
    run -0 within 1e-6 "$F/A.proba" <(printf '%s\n' "${lines[@]}")
    mean_proba 1 1 >mean.txt
    run -0 --separate-stderr infer -m "$A" -m "$B" --anytime --exit-threshold 1.01 --proba <test.csv
    run -0 within 1e-6 mean.txt <(printf '%s\n' "${lines[@]}")
}

@test "--anytime: a record stops at A when A is sure enough, else gets the average; --eval says where" {
    mean_proba 1 1 | awk -F, '{ b = 1; for (k = 2; k <= 3; k++) if ($k > $b) b = k; print (b - 1) "," $b }' >mean.out
    run -0 --separate-stderr infer -m "$A" -m "$B" --anytime --exit-threshold 0.7 --eval --stats-json s.json <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 awk -F, 'FNR == 1 { f++ }
        f == 1 { a[FNR] = $0; c[FNR] = $2; next }
        f == 2 { m[FNR] = $0; next }
        {
            want = c[FNR] >= 0.7 ? a[FNR] : m[FNR]
            split(want, x, ","); d = x[2] - $2
            if (x[1] != $1 || d > 1e-6 || -d > 1e-6) { print FNR ": " $0 " vs " want; bad = 1 }
        }
        END { exit bad }' "$F/A.out" mean.out out.txt
    local n1 p1 p2
    n1=$(awk -F, '$2 >= 0.7 { n++ } END { print n + 0 }' "$F/A.out")
    p1=$(awk -v n="$n1" 'BEGIN { printf "%.2f", 100 * n / 150 }')
    p2=$(awk -v n="$n1" 'BEGIN { printf "%.2f", 100 * (150 - n) / 150 }')
    assert_regex "$stderr" "(^|"$'\n'")answered at model 1 $p1%, model 2 $p2%"$'\n'
    need_python
    run -0 json s.json 'j["members"]'
    assert_equal "$output" "[$n1, $((150 - n1))]"
}

@test "an ensemble of models of different shapes: exit 1 naming the file" {
    run -1 --separate-stderr infer -m "$A" -m "$F/K4" <test.csv
    assert_regex "$stderr" "^infer: .*K4: 4 inputs and 4 classes, but .*A has 4 and 3"
    assert_output ""
    run -1 --separate-stderr infer -m "$A" -m "$F/I5" <test.csv
    assert_regex "$stderr" "^infer: .*I5: 5 inputs"
}

@test "early exits: threshold 1.01 is the full model, 0 the exit head, in between each record the first sure one" {
    [[ -f $E/manifest.yaml ]] || fail "sgd-train could not train a spec with 'exits: [0]'"
    infer -m "$E" <test.csv >final.txt
    run -0 --separate-stderr infer -m "$E" --exit-threshold 1.01 <test.csv
    run -0 within 1e-6 final.txt <(printf '%s\n' "${lines[@]}")
    run -0 --separate-stderr infer -m "$E" --exit-threshold 0 --eval --stats-json s0.json <test.csv
    printf '%s\n' "${lines[@]}" >exit0.txt
    assert_regex "$stderr" "answered at exit 0 \\(layer 0\\) 100\\.00%, final 0\\.00%"
    ! cmp -s exit0.txt final.txt || fail "the exit head answers as the full model does"
    run -0 --separate-stderr infer -m "$E" --exit-threshold 0.7 --eval --stats-json s.json <test.csv
    printf '%s\n' "${lines[@]}" >mid.txt
    run -0 awk -F, 'FNR == 1 { f++ }
        f == 1 { e[FNR] = $0; c[FNR] = $2; next }
        f == 2 { m[FNR] = $0; next }
        {
            want = c[FNR] >= 0.7 ? e[FNR] : m[FNR]
            split(want, x, ","); d = x[2] - $2
            if (x[1] != $1 || d > 1e-6 || -d > 1e-6) { print FNR ": " $0 " vs " want; bad = 1 }
        }
        END { exit bad }' exit0.txt final.txt mid.txt
    local n
    n=$(awk -F, '$2 >= 0.7 { n++ } END { print n + 0 }' exit0.txt)
    ((n > 0 && n < 150)) || fail "$n of 150 records sure at the exit: not a mix"
    assert_regex "$stderr" "answered at exit 0 \\(layer 0\\) $(awk -v n="$n" 'BEGIN { printf "%.2f", 100 * n / 150 }')%, final"
    need_python
    run -0 json s.json 'j["exits"]'
    assert_equal "$output" "[$n, $((150 - n))]"
    run -0 json s0.json 'j["exits"]'
    assert_equal "$output" "[150, 0]"
}

@test "early exits and --anytime answer alike whatever the batching" {
    [[ -f $E/manifest.yaml ]] || fail "sgd-train could not train a spec with 'exits: [0]'"
    local o
    infer -m "$E" --exit-threshold 0.7 <test.csv >e.txt
    infer -m "$A" -m "$B" --anytime --exit-threshold 0.7 <test.csv >a.txt
    for o in "--batch 1" "--batch 7" "--line-buffered"; do
        # shellcheck disable=SC2086
        infer -m "$E" --exit-threshold 0.7 $o <test.csv >got.txt
        run -0 within 1e-6 e.txt got.txt
        # shellcheck disable=SC2086
        infer -m "$A" -m "$B" --anytime --exit-threshold 0.7 $o <test.csv >got.txt
        run -0 within 1e-6 a.txt got.txt
    done
}

# ---- --eval, --stats-json, --coverage-curve -------------------------------------

@test "--eval with tiers: accuracy, ECE, tier table and throughput agree with the output" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0.7 --eval <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    printf '%s\n' "${stderr_lines[@]}" >err.txt
    paste -d, <(cut -d, -f1 test.csv) out.txt >lab.txt # label,pred,conf,tier
    local acc
    acc=$(awk -F, '$1 == $2 { n++ } END { printf "%.4f", n / NR }' lab.txt)
    assert_equal "${stderr_lines[0]}" "infer: eval: 150 records, accuracy $acc"
    assert_equal "${stderr_lines[5]}" "confusion matrix (rows: label, columns: prediction)"
    # ECE, 15 bins of confidence, recomputed
    local ece
    ece=$(awk -F, '{ b = int($3 * 15); if (b > 14) b = 14; n[b]++; h[b] += ($1 == $2); c[b] += $3 }
        END { for (b in n) { d = h[b] - c[b]; e += d < 0 ? -d : d } printf "%.6f", e / NR }' lab.txt)
    run -0 grep -E '^expected calibration error [0-9.]+ \(15 bins\)$' err.txt
    local got=${output#expected calibration error }
    got=${got%% *}
    awk -v e="$got" 'BEGIN { exit !(e >= 0 && e <= 1) }' || fail "ECE $got"
    run -0 near "$got" "$ece" 0.0002
    # the tier table: header, local and remote rows only, counted from stdout
    run -0 grep -nE '^tier +records +fraction +accuracy +p50 ms +p95 ms +p99 ms$' err.txt
    local h=${output%%:*}
    assert_equal "$(sed -n "$((h + 1)),\$p" err.txt | grep -cE '^(local|remote|fallback:)')" 2
    local t n a row
    for t in local remote; do
        n=$(awk -F, -v t="$t" '$4 == t { n++ } END { print n + 0 }' lab.txt)
        a=$(awk -F, -v t="$t" '$4 == t { n++; h += ($1 == $2) } END { printf "%.4f", h / n }' lab.txt)
        row=$(grep -E "^$t " err.txt)
        read -r -a f <<<"$row"
        assert_equal "${f[1]}" "$n"
        assert_equal "${f[2]}" "$(awk -v n="$n" 'BEGIN { printf "%.4f", n / 150 }')"
        assert_equal "${f[3]}" "$a"
        awk -v a="${f[4]}" -v b="${f[5]}" -v c="${f[6]}" 'BEGIN { exit !(a > 0 && a <= b && b <= c) }' ||
            fail "latency quantiles of $t: $row"
    done
    assert_regex "${stderr_lines[-1]}" '^throughput [1-9][0-9]* records/s$'
}

@test "--eval without --forward: a local row only, and no 'answered at' line" {
    run -0 --separate-stderr infer -m "$A" --eval <test.csv
    run -0 diff "$F/A.out" <(printf '%s\n' "${lines[@]}")
    assert_regex "$stderr" $'\nlocal +150 +1\\.0000 +0\\.[0-9]{4} '
    refute_regex "$stderr" $'\n(remote|fallback)'
    refute_regex "$stderr" 'answered at'
    assert_regex "$stderr" $'\nexpected calibration error 0\\.[0-9]{4} \\(15 bins\\)\n'
}

@test "--stats-json: the figures of the --eval report" {
    need_python
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "$(rsh banana)" --threshold 0.6 \
        --eval --stats-json s.json <test.csv
    printf '%s\n' "${stderr_lines[@]}" >err.txt
    run -0 json s.json 'j["records"], j["ece_bins"], j["restarts"], sorted(j["tiers"])'
    assert_output "(150, 15, 0, ['fallback:bad-answer', 'local'])"
    run -0 json s.json '"%.4f %.4f" % (j["accuracy"], j["ece"])'
    local acc ece
    read -r acc ece <<<"$output"
    run -0 grep -x "infer: eval: 150 records, accuracy $acc" err.txt
    run -0 grep -x "expected calibration error $ece (15 bins)" err.txt
    local t row
    for t in local fallback:bad-answer; do
        row=$(grep -E "^$t " err.txt)
        read -r -a f <<<"$row"
        run -0 json s.json "'%d %.4f %.4f %.3f %.3f %.3f' % (lambda x: (x['records'], x['fraction'], x['accuracy'], x['latency_ms']['p50'], x['latency_ms']['p95'], x['latency_ms']['p99'])) (j['tiers']['$t'])"
        assert_equal "$output" "${f[*]:1}"
    done
    run -0 json s.json 'j["records_per_s"] > 0 and sum(t["records"] for t in j["tiers"].values())'
    assert_output 150
}

@test "--coverage-curve: 101 rows from 0.00 to 1.00; the ends agree with the local and final accuracy" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0.7 --eval \
        --coverage-curve cov.tsv <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$(head -n1 cov.tsv)" "$(printf 'fraction_forwarded\tthreshold\taccuracy\tlocal_accuracy\tremote_answered')"
    assert_equal "$(wc -l <cov.tsv)" 102
    local lacc facc
    lacc=$(paste -d, <(cut -d, -f1 test.csv) "$F/A.out" | awk -F, '$1 == $2 { n++ } END { printf "%.6f", n / NR }')
    facc=$(paste -d, <(cut -d, -f1 test.csv) out.txt | awk -F, '$1 == $2 { n++ } END { printf "%.6f", n / NR }')
    run -0 awk -F'\t' -v lacc="$lacc" -v facc="$facc" '
        NR == 1 { next }
        {
            want = sprintf("%.2f", (NR - 2) / 100)
            if ($1 != want) { print "row " NR ": fraction " $1 ", expected " want; bad = 1 }
            if (NR > 2 && ($1 + 0 < f || ($2 != "inf" && $2 + 0 < t))) { print "row " NR " goes down: " $0; bad = 1 }
            f = $1 + 0; t = $2 + 0
            if ($5 < 0 || $5 > 1 || $3 < 0 || $3 > 1) { print "row " NR ": " $0; bad = 1 }
        }
        NR == 2 && ($3 != lacc || $4 != lacc) { print "at 0: " $0 ", local accuracy " lacc; bad = 1 }
        NR == 102 && ($1 != "1.00" || $3 != facc || $4 != "nan") { print "at 1: " $0 ", final accuracy " facc; bad = 1 }
        END { exit bad }' cov.tsv
    # the forwarded fraction of this run (44 of 150 records or so): every
    # row up to it had all its forwarded records answered remotely
    local fr
    fr=$(awk -F, '$3 == "remote" { n++ } END { printf "%d", 100 * n / NR }' out.txt)
    run -0 awk -F'\t' -v fr="$fr" 'NR > 2 && $1 * 100 <= fr && $5 != "1.000000" { print; bad = 1 } END { exit bad }' cov.tsv
}

@test "--stats-json or --coverage-curve where it cannot be written: exit 1, stdout complete" {
    run -1 --separate-stderr infer -m "$A" --eval --stats-json /nonexistent/dir/s.json <test.csv
    assert_regex "$stderr" "/nonexistent/dir/s\\.json"
    assert_equal "${#lines[@]}" 150
    run -1 --separate-stderr infer -m "$A" --eval --coverage-curve /nonexistent/dir/c.tsv <test.csv
    assert_regex "$stderr" "/nonexistent/dir/c\\.tsv"
    mkdir isdir
    run -1 --separate-stderr infer -m "$A" --eval --stats-json isdir <test.csv
    assert_regex "$stderr" "isdir"
    [[ -d isdir ]] || fail "the directory was replaced"
}

@test "--eval when every record is forwarded: a local row of 0 records, JSON nulls, a complete curve" {
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 1.01 --eval \
        --stats-json s.json --coverage-curve cov.tsv <test.csv
    assert_regex "$stderr" $'\nlocal +0 +0\\.0000 '
    assert_regex "$stderr" $'\nremote +150 +1\\.0000 '
    assert_equal "$(wc -l <cov.tsv)" 102
    need_python
    run -0 json s.json 'j["tiers"]["local"]["records"], j["tiers"]["local"]["accuracy"], j["tiers"]["remote"]["records"]'
    assert_output "(0, None, 150)"
}

@test "--coverage-curve of a regression model: refused, no file" {
    run --separate-stderr infer -m "$F/R" --eval --coverage-curve cov.tsv <"$F/reg.csv"
    ((status == 1 || status == 2)) || fail "exit $status: a curve of accuracies for a regression model"
    assert_regex "$stderr" "coverage"
    [[ ! -e cov.tsv ]] || fail "cov.tsv written: $(head -n3 cov.tsv)"
}

@test "--stats-json of a regression model: mse, rmse, mae" {
    need_python
    run -0 --separate-stderr infer -m "$F/R" --eval --stats-json s.json <"$F/reg.csv"
    local mse
    mse=$(sed -n 's/.* mse \([0-9.e-]*\),.*/\1/p' <<<"$stderr")
    run -0 json s.json 'j["records"], "%.6g" % j["mse"], j["tiers"]["local"]["records"], "accuracy" in j'
    assert_output "(200, '$mse', 200, False)"
}

# ---- --calibrate -----------------------------------------------------------------

@test "--calibrate: fits a temperature, writes a new checkpoint with it, lowers NLL and ECE" {
    run -0 --separate-stderr infer -m "$O" --calibrate -o cal <"$F/ocal.csv"
    assert_output "cal"
    assert_regex "$stderr" '^infer: calibrate: 300 records, temperature [0-9.e+]+ \(was 1\): NLL [0-9.]+ -> [0-9.]+, ECE [0-9.]+ -> [0-9.]+$'
    local T nll0 nll1 ece0 ece1
    read -r T nll0 nll1 ece0 ece1 < <(sed -E 's/.*temperature ([^ ]+) .*NLL ([^ ]+) -> ([^,]+), ECE ([^ ]+) -> (.*)/\1 \2 \3 \4 \5/' <<<"$stderr")
    awk -v a="$nll0" -v b="$nll1" 'BEGIN { exit !(b <= a) }' || fail "NLL $nll0 -> $nll1"
    awk -v a="$ece0" -v b="$ece1" 'BEGIN { exit !(b <= a) }' || fail "ECE $ece0 -> $ece1"
    # an overconfident model: T well above 1
    awk -v t="$T" 'BEGIN { exit !(t > 1.5) }' || fail "temperature $T"
    run -0 grep -E '^ +temperature: ' cal/manifest.yaml
    run -0 near "${output##*: }" "$T" 0.001
    # the new checkpoint: same classes, other probabilities
    infer -m "$O" <test.csv >old.txt
    infer -m cal <test.csv >new.txt
    run -0 diff <(cut -d, -f1 old.txt) <(cut -d, -f1 new.txt)
    ! cmp -s old.txt new.txt || fail "the confidences did not change"
    run -0 --separate-stderr infer -m cal -v </dev/null
    assert_regex "$stderr" "temperature $T"
    # the report of the calibrated model on the calibration set
    run -0 --separate-stderr infer -m "$O" --eval <"$F/ocal.csv"
    assert_regex "$stderr" "expected calibration error $ece0 "
    run -0 --separate-stderr infer -m cal --eval <"$F/ocal.csv"
    assert_regex "$stderr" "expected calibration error $ece1 "
}

@test "--calibrate a calibrated checkpoint: 'was' is its temperature, and it barely moves" {
    infer -m "$O" --calibrate -o cal1 <"$F/ocal.csv" >/dev/null 2>err1.txt || fail "first --calibrate failed"
    local T1
    T1=$(sed -E 's/.*temperature ([^ ]+) .*/\1/' err1.txt)
    run -0 --separate-stderr infer -m cal1 --calibrate -o cal2 <"$F/ocal.csv"
    assert_regex "$stderr" "\\(was $T1\\)"
    local T2
    T2=$(sed -E 's/.*temperature ([^ ]+) .*/\1/' <<<"$stderr")
    run -0 near "$T2" "$T1" 0.01
}

@test "--calibrate: SOURCE_DATE_EPOCH fixes the manifest's time; an archive is calibrated as its directory" {
    SOURCE_DATE_EPOCH=1767225600 infer -m "$O" --calibrate -o cal1 <"$F/ocal.csv" >/dev/null 2>&1 ||
        fail "--calibrate failed"
    run -0 grep -x 'created: 2026-01-01T00:00:00Z' cal1/manifest.yaml
    ckpt-pack -o o.tar.zst "$O"
    SOURCE_DATE_EPOCH=1767225600 infer -m o.tar.zst --calibrate -o cal2 <"$F/ocal.csv" >/dev/null 2>&1 ||
        fail "--calibrate of the archive failed"
    # the same checkpoint but for the parent, which names the archive
    run -0 grep -x "parent: \"$PWD/o.tar.zst\"" cal2/manifest.yaml
    for f in model.safetensors optimizer.safetensors state.yaml; do
        cmp cal1/$f cal2/$f || fail "$f differs"
    done
    run -2 --separate-stderr env SOURCE_DATE_EPOCH=soon infer -m "$O" --calibrate -o cal3 <"$F/ocal.csv"
    assert_regex "$stderr" "SOURCE_DATE_EPOCH: 'soon' is not a number of seconds"
    [[ ! -e cal3 ]] || fail "cal3 was written"
}

@test "--calibrate -o an existing directory or file: exit 1, nothing touched" {
    mkdir there
    echo keep >there/file
    run -1 --separate-stderr infer -m "$O" --calibrate -o there <"$F/ocal.csv"
    assert_regex "$stderr" "there"
    assert_output ""
    assert_equal "$(ls there)" "file"
    assert_equal "$(cat there/file)" "keep"
    echo keep >afile
    run -1 --separate-stderr infer -m "$O" --calibrate -o afile <"$F/ocal.csv"
    assert_equal "$(cat afile)" "keep"
}

@test "--calibrate a regression model: an error, no checkpoint" {
    run --separate-stderr infer -m "$F/R" --calibrate -o rcal <"$F/reg.csv"
    ((status == 1 || status == 2)) || fail "exit $status"
    assert_regex "$stderr" "regression"
    [[ ! -e rcal ]] || fail "rcal was written"
}

@test "--calibrate without records: exit 1, no checkpoint" {
    run -1 --separate-stderr infer -m "$O" --calibrate -o cal </dev/null
    assert_regex "$stderr" "no records"
    [[ ! -e cal ]] || fail "cal was written"
}

# ---- other input ---------------------------------------------------------------

@test "--forward with --no-label: the unlabelled line goes out, 'infer --no-label' answers it" {
    cut -d, -f2- test.csv >nolabel.csv
    run -0 --separate-stderr timeout 30 infer -m "$A" --no-label --forward "infer -m '$B' --no-label" \
        --threshold 0.7 <nolabel.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" "$F/B.out"
    assert_equal "$(tier_count out.txt remote)" "$(below "$F/A.out" 0.7)"
}

@test "--forward with --on-error=skip: bad records have no line, the rest keep their answers" {
    awk 'NR == 5 { print "bad,line" } NR == 40 { print "1,2,x,4,5" } { print }' test.csv >withbad.csv
    run -0 --separate-stderr timeout 30 infer -m "$A" --on-error=skip --forward "tee seen.log | infer -m '$B'" \
        --threshold 0.7 <withbad.csv
    printf '%s\n' "${lines[@]}" >out.txt
    run -0 check_lines out.txt "$F/A.out" "$F/B.out"
    # exactly the good records below 0.7 went out
    run -0 diff <(grep -v '^#' seen.log) <(paste -d'|' test.csv "$F/A.out" | awk -F'|' '{ split($2, c, ","); if (c[2] < 0.7) print $1 }')
}

@test "--forward with CRLF input: the same answers" {
    sed 's/$/\r/' test.csv >crlf.csv
    infer -m "$A" --forward "infer -m '$B'" --threshold 0.7 <test.csv >lf.txt
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" --threshold 0.7 <crlf.csv
    run -0 diff lf.txt <(printf '%s\n' "${lines[@]}")
}

# ---- SIGHUP ---------------------------------------------------------------------

# start_inf ARG...: infer ARG... in the background, line-buffered, reading
# the fifo in.fifo (write end: fd $TO) and writing out.fifo (read end: fd
# $FROM); stderr in err.txt
start_inf() {
    mkfifo in.fifo out.fifo
    infer "$@" --line-buffered <in.fifo >out.fifo 2>err.txt 3>&- &
    INF_PID=$!
    exec {TO}>in.fifo {FROM}<out.fifo
}

# ask LINE...: send each line, read its answer; the answers on stdout
ask() {
    local l a
    for l in "$@"; do
        printf '%s\n' "$l" >&"$TO"
        read -r -t 10 a <&"$FROM" || { echo "no answer to $l"; return 1; }
        printf '%s\n' "$a"
    done
}

# stop_inf: close infer's input, check it ends with 0; the rest of its
# output on stdout
stop_inf() {
    exec {TO}>&-
    cat <&"$FROM"
    exec {FROM}<&-
    local rc=0
    wait "$INF_PID" || rc=$?
    INF_PID=
    return $rc
}

# wait_count FILE REGEX N: wait (at most 10 s) until N lines of FILE match
wait_count() {
    local n=100
    while (($(grep -cE -- "$2" "$1") < $3)); do
        ((n-- > 0)) || return 1
        sleep 0.1
    done
}

# a root whose latest link is switched between A (unsure) and C (sure)
mk_root() {
    mkdir root
    cp -r "$A" root/a
    cp -r "$C" root/c
    ln -s a root/latest
    head -n 5 test.csv >five.csv
    mapfile -t FIVE <five.csv
    infer -m "$A" <five.csv >a5.txt
    infer -m "$C" <five.csv >c5.txt
    ! cmp -s a5.txt c5.txt || fail "A and C answer alike"
}

@test "SIGHUP reloads the checkpoint between records, none dropped" {
    mk_root
    start_inf -m root -v
    run -0 ask "${FIVE[@]}"
    assert_output "$(cat a5.txt)"
    ln -sfn c root/latest
    kill -HUP "$INF_PID"
    wait_for_match err.txt 'SIGHUP: reloaded 1 model' || fail "no reload: $(cat err.txt)"
    run -0 ask "${FIVE[@]}"
    assert_output "$(cat c5.txt)"
    ln -sfn a root/latest
    kill -HUP "$INF_PID"
    wait_count err.txt 'SIGHUP: reloaded 1 model' 2 || fail "no second reload: $(cat err.txt)"
    run -0 ask "${FIVE[@]}" "# done"
    assert_output "$(cat a5.txt; echo '# done')"
    stop_inf >rest.txt || fail "infer ended with $?: $(cat err.txt)"
    assert_equal "$(cat rest.txt)" ""
    assert_regex "$(cat err.txt)" "infer: 15 records"
}

@test "SIGHUP: a record sent right after the signal gets the new model" {
    mk_root
    start_inf -m root
    run -0 ask "${FIVE[0]}"
    assert_output "$(sed -n 1p a5.txt)"
    # (bats's run may change a variable named i: the round is kept apart)
    local round want
    for round in c a c a c a; do
        ln -sfn "$round" root/latest
        want=$(sed -n 1p "${round}5.txt")
        kill -HUP "$INF_PID"
        run -0 ask "${FIVE[0]}"
        assert_output "$want"
    done
    stop_inf >/dev/null || fail "infer ended with $?: $(cat err.txt)"
}

@test "SIGHUP with a broken checkpoint or another shape: a warning, the old model kept, exit 0" {
    mk_root
    start_inf -m root
    run -0 ask "${FIVE[@]}"
    assert_output "$(cat a5.txt)"
    # a latest link to nothing
    ln -sfn step-none root/latest
    kill -HUP "$INF_PID"
    wait_for_match err.txt 'SIGHUP: .*keeping the models loaded before' || fail "no warning: $(cat err.txt)"
    run -0 ask "${FIVE[@]}"
    assert_output "$(cat a5.txt)"
    # a corrupt model file
    cp -r "$C" root/bad
    printf 'garbage' >root/bad/model.safetensors
    ln -sfn bad root/latest
    kill -HUP "$INF_PID"
    wait_count err.txt 'keeping the models loaded before' 2 || fail "no second warning: $(cat err.txt)"
    run -0 ask "${FIVE[@]}"
    assert_output "$(cat a5.txt)"
    # 4 classes where there were 3
    cp -r "$F/K4" root/k4
    ln -sfn k4 root/latest
    kill -HUP "$INF_PID"
    wait_count err.txt 'keeping the models loaded before' 3 || fail "no third warning: $(cat err.txt)"
    assert_regex "$(cat err.txt)" "SIGHUP: .*root now has another shape; keeping the models loaded before"
    run -0 ask "${FIVE[@]}"
    assert_output "$(cat a5.txt)"
    stop_inf >/dev/null || fail "infer ended with $?: $(cat err.txt)"
}

@test "SIGHUP with --forward: local answers switch, remote ones go on, no record dropped" {
    mk_root
    start_inf -m root -v --forward "infer -m '$B'" --threshold 0.7
    infer -m "$B" <five.csv >b5.txt
    run -0 ask "${FIVE[@]}"
    printf '%s\n' "${lines[@]}" >got1.txt
    run -0 check_lines got1.txt a5.txt b5.txt
    (($(tier_count got1.txt remote) > 0)) || fail "nothing forwarded among the five"
    ln -sfn c root/latest
    kill -HUP "$INF_PID"
    wait_for_match err.txt 'SIGHUP: reloaded 1 model' || fail "no reload: $(cat err.txt)"
    run -0 ask "${FIVE[@]}"
    printf '%s\n' "${lines[@]}" >got2.txt
    # C is sure of all five: all local, C's answers
    run -0 diff <(cut -d, -f1,2 got2.txt) c5.txt
    assert_equal "$(tier_count got2.txt local)" 5
    stop_inf >/dev/null || fail "infer ended with $?: $(cat err.txt)"
}

@test "a SIGHUP while infer is still starting does not kill it" {
    # infer reads the --calibration file before it answers anything; a fifo
    # holds it there while the signal comes
    mkfifo cal.fifo
    infer -m "$A" --forward "infer -m '$B'" --forward-fraction 0.3 --calibration cal.fifo \
        <test.csv >out.txt 2>err.txt 3>&- &
    INF_PID=$!
    # once its handler is in place (SigCgt, bit 0), the wrapper script has
    # become infer, which now waits for the calibration records
    local n=100 mask
    while mask=$(sed -n 's/^SigCgt:\t*//p' "/proc/$INF_PID/status" 2>/dev/null) &&
        ! ((16#$mask & 1)); do
        ((n-- > 0)) || fail "infer did not start"
        sleep 0.05
    done
    kill -HUP "$INF_PID"
    sleep 0.1
    cat test.csv >cal.fifo 3>&- &
    CAT_PID=$!
    local rc=0
    wait "$INF_PID" || rc=$?
    INF_PID=
    assert_equal "$rc" 0
    assert_equal "$(wc -l <out.txt)" 150
}

# ---- '#!flush' -------------------------------------------------------------------

@test "'#!flush' makes a plain infer answer the records before it, without waiting for EOF" {
    mkfifo in.fifo out.fifo
    infer -m "$A" <in.fifo >out.fifo 2>err.txt 3>&- &
    INF_PID=$!
    exec {TO}>in.fifo {FROM}<out.fifo
    { head -n 3 test.csv; echo '#!flush'; } >&"$TO"
    local got=() a i
    for i in 1 2 3 4; do
        read -r -t 5 a <&"$FROM" || fail "no answer $i before EOF"
        got+=("$a")
    done
    assert_equal "$(printf '%s\n' "${got[@]}")" "$(head -n 3 "$F/A.out"; echo '#!flush')"
    { sed -n 4,5p test.csv; echo '#!flush'; } >&"$TO"
    got=()
    for i in 1 2 3; do
        read -r -t 5 a <&"$FROM" || fail "no answer $i before EOF"
        got+=("$a")
    done
    assert_equal "$(printf '%s\n' "${got[@]}")" "$(sed -n 4,5p "$F/A.out"; echo '#!flush')"
    stop_inf >rest.txt || fail "infer ended with $?: $(cat err.txt)"
    assert_equal "$(cat rest.txt)" ""
}

@test "'#!flush' with --forward: the answers before it come at once, remote ones included" {
    mkfifo in.fifo out.fifo
    infer -m "$A" --forward "infer -m '$B'" --threshold 0.7 <in.fifo >out.fifo 2>err.txt 3>&- &
    INF_PID=$!
    exec {TO}>in.fifo {FROM}<out.fifo
    { head -n 8 test.csv; echo '#!flush'; } >&"$TO"
    local got=() a i
    for i in $(seq 9); do
        read -r -t 5 a <&"$FROM" || fail "no answer $i before EOF"
        got+=("$a")
    done
    printf '%s\n' "${got[@]}" >got.txt
    assert_equal "$(tail -n1 got.txt)" "#!flush"
    head -n 8 "$F/A.out" >a8.txt
    run -0 check_lines got.txt a8.txt "$F/B.out"
    (($(tier_count got.txt remote) > 0)) || fail "nothing forwarded among the first 8"
    stop_inf >/dev/null || fail "infer ended with $?: $(cat err.txt)"
}

# ---- determinism -------------------------------------------------------------------

@test "the same input and remote give the same bytes twice" {
    mk_noisy_data 900 77 >big.csv
    OPENBLAS_NUM_THREADS=1 infer -m "$A" --forward "infer -m '$B'" --threshold 0.8 --deadline 60000 <big.csv >a.txt
    OPENBLAS_NUM_THREADS=1 infer -m "$A" --forward "infer -m '$B'" --threshold 0.8 --deadline 60000 <big.csv >b.txt
    cmp a.txt b.txt
    assert_equal "$(wc -l <a.txt)" 900
    (($(tier_count a.txt remote) > 100)) || fail "few records forwarded"
}

# ---- usage errors -------------------------------------------------------------------

# usage WORD ARG...: infer ARG... exits 2 with a message naming WORD
usage() {
    local word=$1
    shift
    run -2 --separate-stderr infer "$@" <test.csv
    assert_output ""
    [[ $stderr == *"$word"* ]] || fail "infer $*: the message does not name $word: $stderr"
    assert_regex "$stderr" '^infer: '
}

@test "usage errors of --forward and its threshold: exit 2 naming the option" {
    usage --threshold -m "$A" --forward cat
    usage --forward-fraction -m "$A" --forward cat
    usage --threshold -m "$A" --forward cat --threshold 0.5 --forward-fraction 0.3 --calibration test.csv
    usage --calibration -m "$A" --forward cat --forward-fraction 0.3
    usage --forward-fraction -m "$A" --forward cat --forward-fraction 1.5 --calibration test.csv
    usage --forward-fraction -m "$A" --forward cat --forward-fraction -0.1 --calibration test.csv
    usage --threshold -m "$A" --threshold 0.5
    usage --calibration -m "$A" --calibration test.csv
    usage --forward-fraction -m "$A" --forward-fraction 0.5
    usage --proba -m "$A" --forward cat --threshold 0.5 --proba
    usage --forward -m "$F/R" --forward cat --threshold 0.5
    usage --window -m "$A" --forward cat --threshold 0.5 --window 0
    usage --deadline -m "$A" --forward cat --threshold 0.5 --deadline 0
    usage --criterion -m "$A" --criterion bogus
    usage --window -m "$A" --window 8
    usage --deadline -m "$A" --deadline 100
    usage --calibration -m "$A" --forward cat --threshold 0.5 --calibration test.csv
}

@test "usage errors of ensembles, --anytime and --exit-threshold: exit 2 naming the option" {
    usage --anytime -m "$A" --anytime --exit-threshold 0.5
    usage --anytime -m "$A" -m "$B" --anytime
    usage --exit-threshold -m "$A" -m "$B" --exit-threshold 0.5
    usage --weights -m "$A" -m "$B" --weights 1,2,3
    usage --weights -m "$A" -m "$B" --weights 1
    usage --weights -m "$A" -m "$B" --weights 1,-1
    usage --weights -m "$A" -m "$B" --weights 0,0
    usage --exit-threshold -m "$A" --exit-threshold 0.5
}

@test "usage errors of --eval reports and --calibrate: exit 2 naming the option" {
    usage --stats-json -m "$A" --stats-json s.json
    usage --coverage-curve -m "$A" --coverage-curve c.tsv
    usage -o -m "$A" -o newdir
    usage --calibrate -m "$A" --calibrate
    usage --calibrate -m "$A" -m "$B" --calibrate -o newdir
    usage --calibrate -m "$A" --calibrate -o newdir --eval
    usage --calibrate -m "$A" --calibrate -o newdir --forward cat --threshold 0.5
    [[ ! -e newdir && ! -e s.json && ! -e c.tsv ]] || fail "a usage error wrote a file"
}

# ---- found in review ------------------------------------------------------------

@test "answers whose marker never comes back still time out by --deadline" {
    # passes the probe back, then answers records but swallows markers
    cat >r-probe-only.sh <<'EOF'
IFS= read -r l; echo "$l"
while IFS= read -r l; do case $l in '#'*) ;; *) echo 0,0.9 ;; esac; done
sleep 30
EOF
    # (ten records: one batch, so no marker is due between the answers)
    head -n 10 test.csv >ten.csv
    local t0=$SECONDS
    run -0 --separate-stderr timeout 20 infer -m "$A" --forward "sh r-probe-only.sh $U" \
        --threshold 1.01 --deadline 100 <ten.csv
    ((SECONDS - t0 < 10)) || fail "took $((SECONDS - t0)) s"
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$(tier_count out.txt fallback:timeout)" 10
    no_process "r-probe-only.sh $U"
}

@test "a reader of stdout that pauses does not get a healthy co-process stopped" {
    local i
    for i in $(seq 200); do cat test.csv; done >big.csv
    timeout 60 infer -m "$A" --forward "infer -m '$B'" --threshold 1.01 --deadline 300 \
        <big.csv 2>err.txt | { sleep 3; cat; } >out.txt
    assert_equal "$(wc -l <out.txt)" 30000
    run grep -E 'no answer for|restarting' err.txt
    assert_failure
    # (how many are shed while stdout is blocked depends on the scheduler;
    # the co-process itself must never be given up on)
    assert_equal "$(tier_count out.txt fallback:unreachable)" 0
    (($(tier_count out.txt remote) > 0)) || fail "$(cut -d, -f3 out.txt | sort | uniq -c)"
}

@test "a bad record while forwarding: the lines before it are all written, no co-process left" {
    { head -n 100 test.csv; echo '1,2,bad'; tail -n 10 test.csv; } >bad.csv
    run -1 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'; sleep 30 # $U" \
        --threshold 0.7 <bad.csv
    assert_equal "${#lines[@]}" 100
    assert_regex "$stderr" 'stdin:101: '
    no_process "sleep 30 # $U"
}

@test "the send buffer keeps what is in flight, not everything ever sent" {
    # records of about 24 kB (the last feature padded with zeros) through a
    # co-process that lags: three times the records, the same peak size
    awk -F, -v OFS=, 'BEGIN { pad = "0"; while (length(pad) < 24000) pad = pad pad }
        { $5 = $5 pad; print }' test.csv >wide1.csv
    local i n kib=()
    for n in 10 30; do
        for i in $(seq "$n"); do cat wide1.csv; done >wide.csv
        # (AddressSanitizer's quarantine of freed blocks would grow too)
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0 \
            run -0 --separate-stderr timeout 60 infer -v -m "$A" \
            --forward "awk '!/^#/ { for (i = 0; i < 5000; i++) x += i; print \"0,0.9\"; fflush() }'" \
            --threshold 1.01 --deadline 60000 <wide.csv
        assert_equal "${#lines[@]}" $((n * 150))
        kib+=("$(sed -n 's/^infer: peak resident memory \([0-9]*\) KiB$/\1/p' <<<"$stderr")")
    done
    # 72 MB more were sent in the second run
    ((kib[1] < kib[0] + 20000)) || fail "peak resident memory ${kib[0]} then ${kib[1]} KiB"
}

@test "'#!flush' with CR, with --forward: the answers before it come at once" {
    mkfifo in.fifo
    timeout 20 infer -m "$A" --forward "infer -m '$B'" --threshold 1.01 <in.fifo >got.txt &
    local pid=$! w
    exec {w}>in.fifo
    { head -n 3 test.csv; printf '#!flush\r\n'; } >&"$w"
    # the input stays open: the lines come because of the marker
    wait_for_match got.txt '^#!flush' 100 || fail "no answers before the end of the input"
    assert_equal "$(wc -l <got.txt)" 4
    exec {w}>&-
    wait "$pid"
}

@test "--forward-fraction 0 forwards nothing, even below the calibration's least confidence" {
    # calibrate on the most confident third: its minimum is above many inputs
    paste -d' ' "$F/A.out" test.csv | sort -t, -k2 -g | tail -n 50 | cut -d' ' -f2 >sure.csv
    run -0 --separate-stderr timeout 30 infer -m "$A" --forward "infer -m '$B'" \
        --forward-fraction 0 --calibration sure.csv <test.csv
    printf '%s\n' "${lines[@]}" >out.txt
    assert_equal "$(tier_count out.txt local)" 150
}

@test "--stats-json to a fifo is written into it, not replaced" {
    mkfifo s.fifo
    timeout 60 cat s.fifo >got.json & # bounded: infer may fail before it opens the fifo
    run -0 --separate-stderr infer -m "$A" --eval -q --stats-json s.fifo <test.csv
    wait
    [[ -p s.fifo ]] || fail "the fifo was replaced"
    assert_regex "$(cat got.json)" '^\{"records": 150, '
}
