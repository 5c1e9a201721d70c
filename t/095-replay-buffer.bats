#!/usr/bin/env bats
# 095-replay-buffer: every record passes through in order with R replays of
# earlier ones mixed in; the three buffer policies; the state file (saved at
# the end, every N records and on SIGTERM, loaded at start, refused when
# damaged); bad records, write errors and memory bounded by the capacity.

bats_require_minimum_version 1.5.0
load helpers

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
}

# recs N [FIRST] [CLASSES]: N records 'label,id,0.5' with ids FIRST..
# (default 1), unique; label id%CLASSES (default 3).
recs() {
    awk -v n="$1" -v f="${2:-1}" -v k="${3:-3}" \
        'BEGIN { for (i = f; i < f + n; i++) printf "%d,%d,0.5\n", i % k, i }'
}

# check_replay IN OUT [WINDOW] [PER]: OUT is IN (empty lines dropped) with
# replays mixed in, each one a record that came strictly before the one it
# follows (within the last WINDOW records when given, not 0); prints the
# number of replays, or with PER=1 the number after each record.  Fails,
# saying why, otherwise.
check_replay() {
    awk -v w="${3:-0}" -v per="${4:-0}" '
        NR == FNR { if ($0 != "") want[++n] = $0; next }
        bad { next }
        k < n && $0 == want[k + 1] {
            k++
            if (substr($0, 1, 1) != "#") { i++; pos[$0] = i; after[i] = 0 }
            next
        }
        !($0 in pos) { print "output line " FNR " is not an earlier record: " $0; bad = 1; next }
        pos[$0] >= i { print "output line " FNR " replays the current record: " $0; bad = 1; next }
        w && pos[$0] < i - w { print "output line " FNR ": record " pos[$0] " is older than the last " w " before record " i; bad = 1; next }
        { r++; after[i]++ }
        END {
            if (bad) exit 1
            if (k != n) { print "only " k " of the " n " input lines passed through"; exit 1 }
            if (!per) { print r + 0; exit 0 }
            s = ""
            for (j = 1; j <= i; j++) s = s (j > 1 ? " " : "") after[j]
            print s
        }' "$1" "$2"
}

# wait_for_file FILE [TENTHS]: wait until FILE exists (default at most 30 s)
wait_for_file() {
    local n=${2:-300}
    until [[ -e $1 ]]; do
        ((n-- > 0)) || return 1
        sleep 0.1
    done
}

# state_records FILE: the record lines of a state file
state_records() {
    awk '/^end / { p = 0 } p { print } /^records / { p = 1 }' "$1"
}

# state_key FILE KEY: the value of a 'KEY value' line of a state file
state_key() {
    sed -n "s/^$2 //p" "$1" | head -n 1
}

# below X LIMIT: X < LIMIT (floating point)
below() {
    awk -v x="$1" -v l="$2" 'BEGIN { exit !(x < l) }'
}

# ---- command line ---------------------------------------------------------------

@test "--help and --version: stdout, exit 0" {
    run -0 --separate-stderr replay-buffer --help
    assert_line --index 0 --regexp '^Usage: replay-buffer '
    local o
    for o in --ratio --capacity --policy --state --save-every --fresh --seed --on-error \
        reservoir class-balanced recent; do
        assert_output --partial -- "$o"
    done
    assert_equal "$stderr" ""
    run -0 --separate-stderr replay-buffer -h
    run -0 --separate-stderr replay-buffer --version
    assert_output --regexp '^replay-buffer \(mini-nn\) [0-9]+\.[0-9]+\.[0-9]+$'
    run -0 replay-buffer -V
}

@test "usage errors: exit 2, a message on stderr, nothing on stdout" {
    recs 5 >in.csv
    local args
    while IFS= read -r args; do
        eval "set -- $args"
        run -2 --separate-stderr replay-buffer "$@" <in.csv
        assert_equal "$output" "" || fail "stdout for: $args"
        # (getopt's own line starts with argv[0], under libtool the .libs path)
        grep -q '^replay-buffer: ' <<<"$stderr" || fail "no 'replay-buffer: ' line for: $args"
    done <<'EOF'
--ratio -1
--ratio x
--ratio ''
--ratio 1001
--ratio nan
-r 1x
--capacity 0
--capacity -3
-c x
--policy lru
--policy ''
--save-every 5
--save-every 0 --state s
--fresh
--state ''
--seed -1
--seed x
--on-error=maybe
--bogus
-Z
in.csv in.csv
EOF
    [[ ! -e s ]] || fail "a usage error wrote the state file"
}

@test "a FILE argument is read like stdin; a missing one is an error naming it" {
    recs 50 >in.csv
    replay-buffer --seed 4 <in.csv >a.out
    run -0 replay-buffer --seed 4 in.csv
    assert_equal "$output" "$(cat a.out)"
    run -0 replay-buffer --seed 4 - <in.csv
    assert_equal "$output" "$(cat a.out)"
    run -1 --separate-stderr replay-buffer nope.csv
    assert_regex "$stderr" '^replay-buffer: nope\.csv: No such file'
    assert_output ""
}

# ---- the stream -----------------------------------------------------------------

@test "every input record passes through, in order; replays are earlier records" {
    recs 500 >in.csv
    local p
    for p in reservoir class-balanced recent; do
        replay-buffer --policy "$p" --capacity 30 --ratio 1.5 <in.csv >out || fail "$p failed"
        run -0 check_replay in.csv out
        assert_equal "$output" 749 # 1.5 * 500 - the one that found the buffer empty
    done
}

@test "replays per record follow the floor of the accumulated ratio" {
    recs 101 >in.csv
    local r want got
    for r in 1 0.5 2.5 0 0.25 3; do
        replay-buffer --ratio "$r" --capacity 10 <in.csv >out || fail "--ratio $r failed"
        got=$(check_replay in.csv out 0 1) || fail "--ratio $r: $got"
        # record i is followed by floor(R*i) - floor(R*(i-1)) replays, except
        # the first, which finds the buffer empty (its whole replays are
        # lost, its fraction kept)
        want=$(awk -v r="$r" 'BEGIN {
            for (i = 1; i <= 101; i++) {
                c = i == 1 ? 0 : int(r * i) - int(r * (i - 1))
                if (i == 2) c = int(r * 2) - int(r)
                s = s (i > 1 ? " " : "") c
            }
            print s }')
        assert_equal "$got" "$want"
        run -0 wc -l <out
        assert_equal "$output" $((101 + $(awk -v r="$r" 'BEGIN { print int(r * 101) - int(r) }')))
    done
}

@test "'#' lines pass through in place, are never replayed; empty lines and CRs go" {
    {
        echo '# head'
        recs 3
        printf '\n#!ckpt 1\n'
        recs 4 4
        printf '5,100,0.5\r\n'
        printf '\n\n# tail\n'
    } >in.csv
    replay-buffer --ratio 2 <in.csv >out
    # the CR is dropped: compare with the input without it
    tr -d '\r' <in.csv >want.csv
    run -0 check_replay want.csv out
    assert_equal "$output" 14
    run -0 grep -c '^#' out
    assert_equal "$output" 3
    run -1 grep -c '^$' out
    assert_equal "$output" 0
    run -1 grep -c $'\r' out
    assert_equal "$(head -n 1 out)" '# head'
    assert_equal "$(tail -n 1 out)" '# tail'
}

@test "the same seed gives the same bytes; another seed other replays" {
    recs 400 >in.csv
    local p
    for p in reservoir class-balanced recent; do
        replay-buffer --policy "$p" -c 50 --seed 9 <in.csv >a
        replay-buffer --policy "$p" -c 50 --seed 9 <in.csv >b
        run -0 cmp a b
        replay-buffer --policy "$p" -c 50 --seed 10 <in.csv >c
        run -1 cmp -s a c
    done
    # the default seed is 1
    replay-buffer <in.csv >a
    replay-buffer --seed 1 <in.csv >b
    run -0 cmp a b
}

# ---- policies -------------------------------------------------------------------

@test "recent replays only from the last N records, and from all of them" {
    recs 300 >in.csv
    replay-buffer --policy recent --capacity 7 --ratio 3 <in.csv >out
    run -0 check_replay in.csv out 7
    # the whole window is used, evenly: records 8..300 are each followed by
    # 3 replays drawn from the 7 before it, so the replays 7 records back
    # are Binomial(293 * 3 = 879, 1/7): mean 125.6, sd sqrt(879 * 1/7 * 6/7)
    # = 10.4; mean - 4 sd = 84.1 (seeds 1..20: 110..143; a draw that favours
    # the newer records, the larger of two: about 18)
    run -0 awk -F, '
        { if (!seen[$2]++) { cur = $2; next } if (cur - $2 == 7) n++ }
        END { print n + 0 }' out
    ((output > 84)) || fail "$output replays 7 records back, expected about 126 (more than 84)"
    # the state holds the last 7, oldest first
    replay-buffer --policy recent --capacity 7 --state s <in.csv >/dev/null
    run -0 state_records s
    assert_output "$(tail -n 7 in.csv)"
}

@test "reservoir: the buffer is a uniform sample of the stream" {
    recs 10000 >in.csv
    replay-buffer --capacity 1000 --ratio 0 --seed 3 --state s <in.csv >/dev/null
    state_records s >held
    run -0 wc -l <held
    assert_equal "$output" 1000
    run -0 sort -u held
    assert_equal "${#lines[@]}" 1000
    # ids in 20 cells, a tenth of the stream and odd or even: 50 each.  A
    # uniform sample of 1000 of the 10000 (without replacement: multivariate
    # hypergeometric counts) gives the sum over the cells of (c - 50)^2 / 50
    # mean (20 - 1) (10000 - 1000)/(10000 - 1) = 17.1 and sd about
    # sqrt(2 * 19) * 0.9 = 5.55: mean + 4 sd = 39.3 (simulated: mean 17.1,
    # sd 5.52; seeds 1..20: 9.1..29.8).  (Keeping the first 1000: 9000;
    # offering only every other record: over 1000.)
    run -0 awk -F, '{ c[int(($2 - 1) / 1000) * 2 + $2 % 2]++ }
        END { for (j = 0; j < 20; j++) x += (c[j] - 50) ^ 2 / 50; print x; for (j = 0; j < 20; j++) print c[j] }' held
    below "${lines[0]}" 39.3 || fail "chi-square ${lines[0]} >= 39.3: the buffer is not a uniform sample"
    # and the replays at the end of the stream reach back to its start: the
    # last 400 lines are records 9801..10000, each with one replay drawn
    # from a buffer about 20.4% of which is ids <= 2000 (hypergeometric,
    # sd 1.2 points), so that the replays of those are about Binomial(200,
    # 0.204) with the buffer's spread: mean 40.8, sd 6.2; mean - 4 sd = 16
    # (simulated: mean 40.4, sd 6.18; seeds 1..20: 31..52.  A buffer of the
    # latest records: 0)
    replay-buffer --capacity 1000 --ratio 1 --seed 3 <in.csv | tail -n 400 >end
    run -0 awk -F, '$2 <= 2000 { n++ } END { print n + 0 }' end
    ((output >= 16)) || fail "only $output of the last 200 replays are of the first 2000 records (about 40 expected)"
}

@test "reservoir: the first N records are all kept while the buffer fills" {
    recs 40 >in.csv
    replay-buffer --capacity 40 --state s <in.csv >/dev/null
    run -0 state_records s
    assert_output "$(cat in.csv)"
}

@test "class-balanced: classes 0, then 1, then 2 end up balanced within 1" {
    { recs 3000 1 1; recs 3000 1 1 | sed 's/^0/1/'; recs 3000 1 1 | sed 's/^0/2/'; } >in.csv
    local cap
    for cap in 99 100 301; do
        rm -f s
        replay-buffer --policy class-balanced --capacity "$cap" --ratio 0 --state s <in.csv >/dev/null
        state_records s >held
        run -0 wc -l <held
        assert_equal "$output" "$cap"
        run -0 awk -F, '{ c[$1]++ } END { lo = 1e9; hi = 0
            for (k = 0; k < 3; k++) { if (c[k] < lo) lo = c[k]; if (c[k] > hi) hi = c[k] }
            print lo, hi }' held
        local lo=${output% *} hi=${output#* }
        assert [ "$((hi - lo))" -le 1 ]
        assert [ "$lo" -ge $((cap / 3)) ]
        # the per-class counts saved are the records seen
        run -0 grep -E '^class [0-9]+ ' s
        assert_output $'class 0 3000\nclass 1 3000\nclass 2 3000'
    done
}

@test "class-balanced: a rare class is kept whole" {
    { recs 2000 1 1; recs 10 5000 1 | sed 's/^0/1/'; recs 500 6000 1; } >in.csv
    replay-buffer --policy class-balanced --capacity 50 --ratio 0 --state s <in.csv >/dev/null
    run -0 bash -c 'awk "/^end /{p=0} p{print} /^records /{p=1}" s | grep -c "^1,"'
    assert_output 10
}

# ---- the state file -------------------------------------------------------------

@test "--state: saved at the end in its documented format, atomically" {
    recs 100 >in.csv
    mkdir d
    run -0 --separate-stderr replay-buffer --capacity 20 --ratio 0.5 --state d/s <in.csv
    mv d/s s
    run -0 ls -A d
    assert_output "" # no temporary file left behind
    run -0 sed -n 1p s
    assert_output '# mini-nn replay-buffer state 1'
    assert_equal "$(state_key s policy)" reservoir
    assert_equal "$(state_key s capacity)" 20
    assert_equal "$(state_key s seen)" 100
    assert_equal "$(state_key s records)" 20
    run -0 grep -cE '^rng [0-9]+ [0-9]+ [0-9]+ [0-9]+$' s
    assert_equal "$(state_records s | wc -l)" 20
    # the end line: the XXH3-64 of everything before it
    head -n -1 s >body
    local h
    h=$(xxh3 body) || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
    run -0 tail -n 1 s
    assert_output "end $h"
}

@test "--state: a missing file starts empty, like no --state" {
    recs 60 >in.csv
    replay-buffer --seed 2 <in.csv >plain
    run -0 --separate-stderr replay-buffer --seed 2 --state new.st <in.csv
    assert_equal "$output" "$(cat plain)"
    [[ -f new.st ]] || fail "no state file written"
    # -v says it was loaded the next time
    run -0 --separate-stderr replay-buffer -v --state new.st </dev/null
    assert_regex "$stderr" 'loaded [0-9]+ records from new\.st'
}

@test "--state: two halves give the same bytes and state as one run (every policy)" {
    recs 600 >in.csv
    head -n 250 in.csv >a.csv
    tail -n +251 in.csv >b.csv
    local p
    for p in reservoir class-balanced recent; do
        rm -f one.st two.st
        replay-buffer --policy "$p" -c 40 -r 1.5 --seed 7 --state one.st <in.csv >one.out
        replay-buffer --policy "$p" -c 40 -r 1.5 --seed 7 --state two.st <a.csv >two.out
        replay-buffer --policy "$p" -c 40 -r 1.5 --seed 99 --state two.st <b.csv >>two.out
        run -0 check_replay in.csv two.out
        cmp one.out two.out || fail "--policy $p: output of two halves differs from one run"
        cmp one.st two.st || fail "--policy $p: state of two halves differs from one run"
    done
}

@test "--save-every N writes the state while the input is still open" {
    recs 100 >in.csv
    mkfifo in
    replay-buffer --state s --save-every 25 -c 10 <in >out 2>err &
    local pid=$! rc=0
    exec 7>in
    head -n 60 in.csv >&7
    wait_for_match s '^seen 50$' 300 || { kill -9 "$pid"; fail "no state saved after 50 records"; }
    kill -0 "$pid" || fail "replay-buffer ended before its input did"
    run -0 state_records s
    assert_equal "${#lines[@]}" 10
    tail -n +61 in.csv >&7
    exec 7>&-
    wait "$pid" || rc=$?
    assert_equal "$rc" 0
    assert_equal "$(state_key s seen)" 100
    run -0 check_replay in.csv out
}

@test "SIGTERM while reading an open pipe: exit 0, the state saved, a message" {
    recs 100 >in.csv
    mkfifo in
    replay-buffer --state s --save-every 40 -c 10 <in >out 2>err &
    local pid=$! rc=0
    exec 7>in
    head -n 40 in.csv >&7
    # the save after record 40 means the handler is in place and the input
    # consumed; remove it so that only the signal can write it again
    wait_for_match s '^end ' 300 || { kill -9 "$pid"; fail "no state saved after 40 records"; }
    rm s
    kill -TERM "$pid"
    wait_gone "$pid" 300 || { kill -9 "$pid"; fail "still running after SIGTERM"; }
    wait "$pid" || rc=$?
    exec 7>&-
    assert_equal "$rc" 0
    [[ -f s ]] || fail "no state saved on SIGTERM"
    assert_equal "$(state_key s seen)" 40
    run -0 cat err
    assert_output --regexp '^replay-buffer: .*signal'
    head -n 40 in.csv >want.csv
    run -0 check_replay want.csv out
    assert_equal "$output" 39
    run -0 ls -A
    assert_output $'err\nin\nin.csv\nout\ns\nwant.csv'
}

# bad_state FILE: replay-buffer refuses FILE (exit 1, naming it, suggesting
# --fresh, nothing on stdout); then --fresh works and replaces it.
bad_state() {
    local f=$1
    shift
    run -1 --separate-stderr replay-buffer "$@" --state "$f" <in.csv
    assert_output ""
    assert_regex "$stderr" "^replay-buffer: .*$f"
    assert_regex "$stderr" '--fresh'
}

# good_state: s, a valid state of a reservoir of 20 after 100 records
good_state() {
    recs 100 >in.csv
    replay-buffer -c 20 --state s <in.csv >/dev/null
    cp s good.st
}

@test "a truncated, damaged, empty or foreign state file: exit 1, --fresh suggested" {
    good_state
    local size
    size=$(stat -c %s s)
    head -c $((size - 5)) good.st >s # into the end line
    bad_state s
    assert_regex "$stderr" "no 'end' line with its hash"
    head -c 200 good.st >s # into the records
    bad_state s
    assert_regex "$stderr" "no 'end' line with its hash"
    head -n -1 good.st >s # at a line: no end line
    bad_state s
    assert_regex "$stderr" "no 'end' line with its hash"
    cp good.st s # a byte changed in a record
    printf '\x31' | dd of=s bs=1 seek=$((size - 40)) conv=notrunc status=none
    run -1 cmp -s good.st s
    bad_state s
    assert_regex "$stderr" 'hash does not match'
    # a digit changed in the hash (the 'end ' before it kept)
    awk 'NR > 1 { print last } { last = $0 }
         END { d = substr(last, 5, 1); print "end " (d == "0" ? "1" : "0") substr(last, 6) }' good.st >s
    run -0 grep -cE '^end [0-9a-f]{16}$' s
    run -1 cmp -s good.st s
    bad_state s
    assert_regex "$stderr" 'hash does not match'
    : >s
    bad_state s
    assert_regex "$stderr" "no 'end' line with its hash"
    printf 'hello\n' >s
    bad_state s
    assert_regex "$stderr" "no 'end' line with its hash"
    cp good.st s # the other policies' state
    bad_state s --policy recent
    assert_regex "$stderr" 'holds a reservoir buffer, not recent'
    bad_state s --policy class-balanced
    assert_regex "$stderr" 'holds a reservoir buffer, not class-balanced'
    # after every refusal the file is as it was
    run -0 cmp good.st s
}

@test "a state file edited with its structure intact: refused for its hash alone (every policy)" {
    good_state
    local p
    for p in reservoir class-balanced recent; do
        rm -f s
        replay-buffer --policy "$p" -c 20 --state s <in.csv >/dev/null
        cp s before.st
        # the first record's last field, 0.5, made 0.7: the same labels,
        # counts and sizes, a state that only its hash can tell from a good one
        awk '/^records / { r = 1; print; next }
             r == 1 && sub(/,0\.5$/, ",0.7") { r = 2 }
             { print }' before.st >s
        run -1 cmp -s before.st s
        assert_equal "$(stat -c %s s)" "$(stat -c %s before.st)"
        cp s edited.st
        bad_state s --policy "$p"
        assert_regex "$stderr" 'hash does not match'
        run -0 cmp edited.st s # left as it was
        # the same contents with a hash that matches them: loaded, the
        # edited record kept (so that the refusal above was the hash's alone)
        head -n -1 s >body
        printf 'end %s\n' "$(xxh3 body)" | cat body - >resealed
        run -0 --separate-stderr replay-buffer --policy "$p" --ratio 0 --state resealed </dev/null
        assert_equal "$stderr" ""
        run -0 grep -c ',0\.7$' resealed
        assert_output 1
    done
}

@test "--fresh ignores a bad state file and replaces it" {
    good_state
    head -c 100 good.st >s
    replay-buffer -c 20 <in.csv >plain
    run -0 --separate-stderr replay-buffer -c 20 --fresh --state s <in.csv
    assert_equal "$output" "$(cat plain)"
    run -0 cmp good.st s
    # another policy too
    run -0 replay-buffer --policy recent --fresh --state s <in.csv
    assert_equal "$(state_key s policy)" recent
    run -0 replay-buffer --policy recent --state s </dev/null
}

@test "two processes on one --state: the second refuses at its start, the first's state stays whole" {
    recs 100 >in.csv
    mkfifo in
    replay-buffer --state s --save-every 10 -c 10 <in >out 2>err &
    local pid=$! rc=0
    exec 7>in
    head -n 20 in.csv >&7
    # a state saved: the first process holds the lock, taken before it loads
    wait_for_match s '^seen 20$' 300 || { kill -9 "$pid"; fail "no state saved after 20 records"; }
    local before
    before=$(cat s)
    run -1 --separate-stderr replay-buffer --state s <in.csv
    assert_output ""
    assert_equal "$stderr" "replay-buffer: --state s: another process is using it (it holds s.lock)"
    # --fresh would replace the state: refused the same way
    run -1 --separate-stderr replay-buffer --state s --fresh <in.csv
    assert_regex "$stderr" '^replay-buffer: --state s: another process is using it'
    assert_equal "$(cat s)" "$before"
    tail -n +21 in.csv >&7
    exec 7>&-
    wait "$pid" || rc=$?
    assert_equal "$rc" 0
    assert_equal "$(state_key s seen)" 100
    run -0 check_replay in.csv out
    # the lock goes with its holder
    recs 5 | replay-buffer -q --state s >/dev/null || fail "the state is still locked"
    assert_equal "$(state_key s seen)" 105
}

@test "--state's lock file is never opened through a link" {
    recs 10 >in.csv
    echo precious >outside
    ln -s outside s.lock
    run -1 --separate-stderr replay-buffer --state s <in.csv
    assert_output ""
    assert_equal "$stderr" "replay-buffer: --state: s.lock: is a symbolic link, refused"
    assert_equal "$(cat outside)" precious
    [[ ! -e s ]] || fail "a state was written"
}

@test "a directory as the state file: exit 1, named, not a regular file" {
    recs 10 >in.csv
    mkdir s
    run -1 --separate-stderr replay-buffer --state s <in.csv
    assert_output ""
    assert_regex "$stderr" "^replay-buffer: s: .*(is a directory|not a regular file)"
    [[ -d s ]] || fail "the directory was replaced"
}

@test "a state file whose hash is right but whose body lies: exit 1" {
    good_state
    xxh3 good.st >/dev/null || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
    # one record less than 'records 20' says
    head -n -2 good.st >body
    printf 'end %s\n' "$(xxh3 body)" | cat body - >s
    bad_state s
    assert_regex "$stderr" 'fewer records than it says'
    # a record with no numeric label
    head -n -1 good.st | sed '$ s/^[0-9]*,/x,/' >body
    printf 'end %s\n' "$(xxh3 body)" | cat body - >s
    bad_state s
    assert_regex "$stderr" 'a record without a valid label'
    # class-balanced: a label not among its classes
    replay-buffer --policy class-balanced -c 20 --state cb <in.csv >/dev/null
    head -n -1 cb | sed '$ s/^[0-9]*,/7,/' >body
    printf 'end %s\n' "$(xxh3 body)" | cat body - >cb
    bad_state cb --policy class-balanced
    assert_regex "$stderr" 'a record without a valid label'
}

# ---- bad records and output -----------------------------------------------------

@test "a non-numeric label: exit 1 naming stdin:LINE ('#' and empty lines count)" {
    { recs 2; printf '# c\n\n'; printf 'cat,3,0.5\n'; recs 2 4; } >bad.csv
    run -1 --separate-stderr replay-buffer <bad.csv
    assert_regex "$stderr" "^replay-buffer: stdin:5: label 'cat' is not a number"
    run -1 --separate-stderr replay-buffer bad.csv
    assert_regex "$stderr" "^replay-buffer: bad\.csv:5: label 'cat' is not a number"
    # a failed run leaves the state file as it was
    recs 10 >in.csv
    replay-buffer --state s <in.csv >/dev/null
    cp s before
    run -1 --separate-stderr replay-buffer --state s <bad.csv
    run -0 cmp before s
}

@test "--on-error=skip drops bad records and counts them" {
    { recs 2; printf 'cat,3,0.5\n,4,0.5\n'; recs 2 5; } >bad.csv
    run -0 --separate-stderr replay-buffer --on-error=skip --ratio 0 <bad.csv
    assert_output "$(recs 2; recs 2 5)"
    assert_regex "$stderr" "skipped 2 bad records \(first: stdin:3: label 'cat' is not a number\)"
    run -0 --separate-stderr replay-buffer -q --on-error=skip --ratio 0 <bad.csv
    assert_equal "$stderr" ""
}

@test "class-balanced: a negative or fractional label is not a class id" {
    local y
    for y in -1 1.5 1e7; do
        { recs 2; printf '%s,3,0.5\n' "$y"; } >bad.csv
        run -1 --separate-stderr replay-buffer --policy class-balanced <bad.csv
        assert_regex "$stderr" "^replay-buffer: stdin:3: label '$y' is not a class id"
        run -0 --separate-stderr replay-buffer --policy class-balanced --on-error=skip <bad.csv
        assert_regex "$stderr" 'skipped 1 bad record'
    done
    # other policies take any number as a label
    { recs 2; printf -- '-1.5,3,0.5\n'; } >reg.csv
    run -0 replay-buffer <reg.csv
    run -0 replay-buffer --policy recent <reg.csv
}

@test "output to /dev/full: exit 1, a write error, no state saved" {
    recs 2000 >in.csv
    run -1 --separate-stderr to_full replay-buffer <in.csv
    assert_regex "$stderr" '^replay-buffer: write error.*No space left on device'
    mkdir d
    run -1 --separate-stderr to_full replay-buffer --state d/s <in.csv
    run -0 ls -A d
    assert_output "" # no state, no temporary file
}

@test "a reader that goes away ends replay-buffer quietly" {
    recs 100000 >big.csv
    run -0 bash -c 'replay-buffer -c 100 <big.csv 2>err | head -n 1; s=("${PIPESTATUS[@]}"); echo "status ${s[0]}"'
    assert_equal "${lines[0]}" "1,1,0.5"
    assert_regex "${lines[1]}" '^status (0|141)$'
    run -0 cat err
    assert_output ""
    # with a state file: no temporary file left behind
    run -0 bash -c 'replay-buffer -c 100 --state s --save-every 1000 <big.csv 2>err | head -n 1'
    run -0 cat err
    assert_output ""
    run -0 bash -c 'ls -A | grep -c tmp || true'
    assert_output 0
}

# ---- memory ----------------------------------------------------------------------

# peak_kb FILE: the peak resident memory (KiB) of replay-buffer --capacity
# 1000 over FILE, from /usr/bin/time, else from /proc while it waits at the
# end of its input.
peak_kb() {
    if [[ -x /usr/bin/time ]] && /usr/bin/time -f %M true >/dev/null 2>&1; then
        /usr/bin/time -o kb -f %M replay-buffer -c 1000 <"$1" >/dev/null || return 1
        tail -n 1 kb
        return
    fi
    [[ -r /proc/self/status ]] || fail "neither /usr/bin/time nor /proc to measure memory with"
    local n pid
    n=$(wc -l <"$1")
    rm -f pk.st fifo
    mkfifo fifo
    replay-buffer -c 1000 --state pk.st --save-every "$n" <fifo >/dev/null &
    pid=$!
    exec 8>fifo
    cat "$1" >&8
    wait_for_match pk.st "^seen $n\$" 300 || { kill -9 "$pid"; return 1; }
    sed -n 's/^VmHWM: *\([0-9]*\) kB/\1/p' "/proc/$pid/status"
    exec 8>&-
    wait "$pid"
}

@test "resident memory does not grow with the stream length" {
    # records of about 100 bytes
    awk 'BEGIN { for (i = 1; i <= 200000; i++)
        printf "%d,%d,%s\n", i % 10, i, "0.123456,0.234567,0.345678,0.456789,0.567891,0.678912,0.789123,0.891234,0.912345" }' >long.csv
    head -n 20000 long.csv >short.csv
    local a b
    a=$(peak_kb short.csv) || fail "could not measure the short run"
    b=$(peak_kb long.csv) || fail "could not measure the long run"
    echo "peak RSS: $a KiB for 20000 records, $b KiB for 200000" >&3
    assert [ "$((b - a))" -lt 1024 ]
}

# signed_state FILE: FILE with an 'end' line over its contents (as a
# hostile writer could make it)
signed_state() {
    local h
    h=$(xxh3 "$1") || fail "cannot compute XXH3 (cc and libxxhash-dev are needed)"
    printf 'end %s\n' "$h" >>"$1"
}

@test "hostile state files with a right hash: counts that would wrap or divide by zero are refused" {
    recs 3 >in.csv
    local rng='rng 1 2 3 4'
    printf '%s\n' '# mini-nn replay-buffer state 1' 'policy reservoir' 'capacity 1' \
        'seen 18446744073709551615' 'credit 0' "$rng" 'records 1' '0,1,0.5' >s
    signed_state s
    run -1 --separate-stderr replay-buffer -c 1 --state s <in.csv
    assert_regex "$stderr" "^replay-buffer: s: .*out of range"
    printf '%s\n' '# mini-nn replay-buffer state 1' 'policy reservoir' 'capacity 1' \
        'seen 5' 'credit 0' 'rng 0 0 0 0' 'records 1' '0,1,0.5' >s
    signed_state s
    run -1 --separate-stderr replay-buffer -c 1 --state s <in.csv
    # class counts below the records held, or above what was seen
    printf '%s\n' '# mini-nn replay-buffer state 1' 'policy class-balanced' 'capacity 3' \
        'seen 3' 'credit 0' "$rng" 'classes 1' 'class 0 0' 'records 3' '0,1,0.5' '0,2,0.5' '0,3,0.5' >s
    signed_state s
    run -1 --separate-stderr replay-buffer -c 2 --policy class-balanced --state s <in.csv
    printf '%s\n' '# mini-nn replay-buffer state 1' 'policy class-balanced' 'capacity 3' \
        'seen 3' 'credit 0' "$rng" 'classes 1' 'class 0 18446744073709551615' 'records 0' >s
    signed_state s
    run -1 --separate-stderr replay-buffer --policy class-balanced --state s <in.csv
    assert_output ""
}

@test "without -c a loaded state keeps its capacity; -c changes it" {
    recs 100 >in.csv
    replay-buffer -c 7 --state s <in.csv >/dev/null
    recs 50 101 | replay-buffer --state s >/dev/null
    run -0 grep -x 'capacity 7' s
    run -0 grep -x 'records 7' s
    recs 50 151 | replay-buffer -c 5 --state s >/dev/null
    run -0 grep -x 'records 5' s
}

# cpu_ms FILE: the CPU time (user + system, ms) of replay-buffer -c 1000
# --policy class-balanced over FILE, the least of TRIES runs (default 3),
# stopping at the first under LIMIT ms when LIMIT is given (a run that is
# killed after 120 s counts what it used)
cpu_ms() {
    local f=$1 tries=${2:-3} limit=${3:-} best= t TIMEFORMAT='%3U %3S'
    while ((tries-- > 0)); do
        { time timeout 120 replay-buffer -c 1000 --policy class-balanced <"$f" >/dev/null 2>>cpu.err; } 2>cpu.t ||
            true
        t=$(awk '{ printf "%d\n", ($1 + $2) * 1000 }' cpu.t) || return 1
        [[ $t =~ ^[0-9]+$ ]] || return 1
        [[ -z $best ]] || ((t < best)) && best=$t
        [[ -n $limit ]] && ((best < limit)) && break
    done
    echo "$best"
}

@test "a label far above the others costs nothing per record (class-balanced)" {
    # 40000 records after a label of 999999, against the control: the same
    # records before it.  Both make room for a million classes once; a cost
    # per record and class (a scan over every label) falls on the first
    # only, 40000 x 10^6 steps (such a scan measured 15.5 s against 0.17 s
    # for the control, 90 times).  CPU times, the least of 3 runs, so that a
    # loaded machine slows both alike; at most 4 times the control (and
    # 50 ms for the clock's granularity).
    { echo '999999,0,0.5'; recs 40000; } >far.csv
    { recs 40000; echo '999999,40001,0.5'; } >control.csv
    run -0 --separate-stderr replay-buffer -c 1000 --policy class-balanced <far.csv
    assert_equal "${#lines[@]}" 80001 # 40001 records, 40000 replays
    local ctl far
    ctl=$(cpu_ms control.csv) || fail "could not time the control run"
    far=$(cpu_ms far.csv 3 $((4 * ctl + 50))) || fail "could not time the far-label run"
    echo "CPU ms: $far with the far label first, $ctl with it last" >&3
    ((far < 4 * ctl + 50)) || fail "$far ms of CPU with the far label first, $ctl ms with it last: a cost per record and class"
}

@test "SIGTERM while the output waits on a slow reader: exit 0, the state saved" {
    recs 300000 >in.csv
    mkfifo slow
    # the slow reader: reads nothing until the signal has been sent (the
    # file 'go'; at most 60 s), then everything
    { wait_for_file go 600; cat >/dev/null; } <slow &
    local reader=$!
    replay-buffer -c 100 --state s <in.csv >slow 2>err &
    local pid=$!
    # SIGTERM caught (SigCgt bit 14) and the process blocked writing to the
    # full pipe: its output is far larger than a pipe holds (at most 30 s)
    local n=0 mask
    while ((n++ < 600)); do
        mask=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null) || true
        if [[ -n $mask ]] && (((16#$mask >> 14) & 1)) &&
            grep -q 'pipe_write' "/proc/$pid/wchan" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    ((n <= 600)) || { touch go; fail "replay-buffer never blocked on the pipe with SIGTERM caught"; }
    kill -TERM "$pid"
    touch go
    local st=0
    wait "$pid" || st=$?
    wait "$reader" || true
    assert_equal "$st" 0
    run -0 grep -c '^records 100$' s
    run -0 cat err
    assert_regex "$output" 'stopping on a signal'
}
