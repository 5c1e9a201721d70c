#!/usr/bin/env bats
# 120-stream-ingest: the head of a pipeline with cuts.  Its output (the lines
# passed on unchanged, the start line, barriers where --every, --interval,
# SIGUSR1, SIGTERM and the end put them, its part), forged cuts in the
# source, the options; --resume by re-reading the source and by the
# ingestion log (--log), whose segments, frames, rotation, trimming and
# lock are checked.  Fixtures: helpers.bash's tiny model and records.

bats_require_minimum_version 1.5.0
load helpers

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    BG_PID=
    HEAD_PID=
}

teardown() {
    [[ -n $HEAD_PID ]] && kill -9 "$HEAD_PID" 2>/dev/null
    [[ -n $BG_PID ]] && kill -9 "$BG_PID" 2>/dev/null
    exec 5>&- 2>/dev/null || true
}

# ---- helpers ------------------------------------------------------------------

# part ID FILE: the part of cut ID in the stream FILE, decoded
part() {
    awk -v id="$1" '$1 == "#!part" && $2 == id { on = 1; next }
        on && /^#=/ { print substr($0, 3); next } { on = 0 }' "$2" | base64 -d
}

# records_before_barriers FILE: for each barrier of FILE, the records before
# it and the barrier
records_before_barriers() {
    awk '/^#!ckpt [0-9]/ { print n, $0; next } !/^#/ { n++ }' "$1"
}

# head_bg ARGS...: stream-ingest ARGS... in.fifo in the background, its
# output in out, its stderr in err; the test holds the FIFO open on fd 5
head_bg() {
    rm -f in.fifo
    mkfifo in.fifo
    stream-ingest "$@" in.fifo >out 2>err 3>&- 5>&- &
    HEAD_PID=$!
    BG_PID=$HEAD_PID
    open_writer 5 in.fifo "$HEAD_PID" || fail "stream-ingest did not open in.fifo: $(cat err)"
    wait_for_match out '^#!ckpt-start ' || fail "no start line: $(cat err)"
}

# pipe_bg ROOT TRAIN-ARGS -- HEAD-ARGS...: stream-ingest HEAD-ARGS... on
# in.fifo (held open on fd 5) | sgd-train TRAIN-ARGS --ckpt-dir ROOT, in the
# background; the head's stderr in err, sgd-train's paths in paths
pipe_bg() {
    local root=$1 train=()
    shift
    while [[ $1 != -- ]]; do train+=("$1"); shift; done
    shift
    rm -f in.fifo head.pid paths
    mkfifo in.fifo
    { (echo $BASHPID >head.pid; exec stream-ingest "$@" in.fifo 2>err) |
        sgd-train -q "${train[@]}" --ckpt-dir "$root" >paths; } 3>&- 5>&- &
    BG_PID=$!
    local n=100
    until [[ -s head.pid ]]; do ((n-- > 0)) || fail "the head never started"; sleep 0.05; done
    HEAD_PID=$(cat head.pid)
    open_writer 5 in.fifo "$HEAD_PID" || fail "stream-ingest did not open in.fifo: $(cat err)"
}

# feed FROM TO: lines FROM to TO of d.csv into the FIFO
feed() {
    sed -n "$1,$2p" d.csv >&5
}

# feed_cuts K N: K chunks of N records, each one only once sgd-train has
# committed the cut at its end (so that none is skipped for a busy writer)
feed_cuts() {
    local i
    for ((i = 1; i <= $1; i++)); do
        feed $(((i - 1) * $2 + 1)) $((i * $2))
        wait_for_match paths "-c$i\$" 300 || fail "cut $i not committed: $(cat err)"
    done
}

# log_bytes DIR: the bytes of every segment of the log DIR together
log_bytes() {
    cat "$1"/seg-* 2>/dev/null | wc -c
}

# ref: the pipeline run once over d.csv (--every 5), uninterrupted, into ref
ref() {
    stream-ingest -q --every 5 d.csv | sgd-train -q -m spec.yaml --ckpt-dir ref >/dev/null ||
        fail "the reference pipeline failed"
}

# same_end ROOT: ROOT's last cut ends like ref's: the same part of stage 0
# (byte for byte: stops and resumes leave no trace in it) and the same model
same_end() {
    grep -q '^cut: {id: [0-9]*, stage: 1, program: sgd-train, pending: 0}$' \
        "$1/latest/manifest.yaml" || fail "$1/latest is not a whole final cut"
    cmp "$1/latest/stage-0.stream-ingest" ref/latest/stage-0.stream-ingest ||
        fail "stream-ingest's final part differs from an uninterrupted run's"
    cmp "$1/latest/model.safetensors" ref/latest/model.safetensors ||
        fail "the model differs from an uninterrupted run's"
}

fixture() {
    mk_spec spec.yaml
    mk_data 40 7 >d.csv
}

# ---- the command line ------------------------------------------------------------

@test "--help on stdout, exit 0; --version" {
    run -0 --separate-stderr stream-ingest --help
    assert_line --partial 'Usage: stream-ingest [OPTION]... [FILE]...'
    assert_equal "$stderr" ""
    run -0 stream-ingest --version
    assert_output --regexp '^stream-ingest \(mini-nn\) [0-9]+\.[0-9]+\.[0-9]+$'
}

@test "usage errors exit 2 and say what is wrong" {
    run -2 --separate-stderr stream-ingest --bogus </dev/null
    run -2 --separate-stderr stream-ingest --every 0 </dev/null
    assert_regex "$stderr" '--every: 0 is out of range'
    run -2 --separate-stderr stream-ingest --every x </dev/null
    run -2 --separate-stderr stream-ingest --interval 0 </dev/null
    assert_regex "$stderr" '--interval'
    run -2 --separate-stderr stream-ingest --interval 0x10 </dev/null
    run -2 --separate-stderr stream-ingest --log L </dev/null
    assert_regex "$stderr" '--log needs --ckpt-dir'
    run -2 --separate-stderr stream-ingest --ckpt-dir ck </dev/null
    assert_regex "$stderr" '--ckpt-dir goes with --log'
    run -2 --separate-stderr stream-ingest --log-segment 4096 </dev/null
    run -2 --separate-stderr stream-ingest --log L --ckpt-dir ck --log-segment 10 </dev/null
    run -2 --separate-stderr stream-ingest --log L --ckpt-dir ck a b
    assert_regex "$stderr" 'one source'
    run -2 --separate-stderr stream-ingest --on-error=maybe </dev/null
    [[ ! -e L ]] || fail "a usage error made the log directory"
}

@test "a missing FILE is exit 1 before anything is written" {
    printf '1,2\n' >a.csv
    run -1 --separate-stderr stream-ingest a.csv missing.csv
    assert_equal "$output" ""
    assert_regex "$stderr" '^stream-ingest: missing.csv: No such file'
}

# ---- the output -------------------------------------------------------------------

@test "every line passes unchanged and in order, after the start line; a final cut at the end" {
    printf '# a comment\n1,0.5,2\n\n#!other control\n2,1e-3,4\n# another\n3,x,y\n' >a.csv
    run -0 --separate-stderr stream-ingest a.csv
    assert_equal "${lines[0]}" '#!ckpt-start 0 1'
    # without the cut lines: the source less its empty line, byte for byte
    grep -v -e '^#!ckpt' -e '^#!part ' -e '^#=' <<<"$output" >got
    grep -v '^$' a.csv >want
    cmp got want || fail "the lines passed differ from the source's"
    # one barrier: the final one, after every record
    records_before_barriers <(printf '%s\n' "$output") >b
    assert_equal "$(cat b)" '3 #!ckpt 1 final'
    assert_equal "${lines[${#lines[@]} - 1]}" '#!ckpt-end 1'
    assert_equal "$stderr" ""
}

@test "FILEs in order, stdin as '-', a last line without a newline gets one" {
    printf '1,a\n2,b' >a.csv
    printf '3,c\n' >b.csv
    run -0 sh -c "printf '4,d\n' | stream-ingest a.csv - b.csv | grep -v '^#'"
    assert_output "$(printf '1,a\n2,b\n4,d\n3,c')"
}

@test "--every 3 over 10 records: barriers after records 3, 6 and 9, and a final one" {
    mk_data 10 >d.csv
    stream-ingest --every 3 d.csv >out
    run -0 records_before_barriers out
    assert_output "$(printf '3 #!ckpt 1\n6 #!ckpt 2\n9 #!ckpt 3\n10 #!ckpt 4 final')"
    # each barrier's block: its part, then its end, right after it
    run -0 grep -A1 -E '^#!ckpt [0-9]' out
    assert_line --index 1 --regexp '^#!part 1 0 stream-ingest [0-9]+ [0-9a-f]{16}$'
    run -0 grep -c '^#!ckpt-end [1-4]$' out
    assert_output 4
}

@test "--every at the source's end: the final cut stands for it; one that falls due goes out before the next line or a wait" {
    # 10 records, --every 5: one cut at record 5 and the final one, not two at 10
    mk_data 10 >d.csv
    stream-ingest --every 5 d.csv >out
    run -0 records_before_barriers out
    assert_output "$(printf '5 #!ckpt 1\n10 #!ckpt 2 final')"
    # FILEs of 5 records each: the barrier after the first one's last record
    # lies there (its position: the end of file 1), before the comment after it
    mk_data 5 >a.csv
    { mk_data 5; printf '# note\n'; } >b.csv
    stream-ingest --every 5 a.csv b.csv >out
    run -0 records_before_barriers out
    assert_output "$(printf '5 #!ckpt 1\n10 #!ckpt 2\n10 #!ckpt 3 final')"
    run -0 grep -A4 '^#!ckpt-end 2$' out
    assert_line --index 1 '# note'
    run -0 part 1 out
    assert_line 'file: 0'
    assert_line 'records: 5'
    # a pipe that has nothing more yet: the barrier does not wait for it
    head_bg --every 2
    printf '1,a\n2,b\n' >&5
    wait_for_match out '^#!ckpt-end 1$' || fail "the barrier due after record 2 waited for the source"
    printf '3,c\n' >&5
    exec 5>&-
    bg_exit 0
    HEAD_PID=
    run -0 records_before_barriers out
    assert_output "$(printf '2 #!ckpt 1\n3 #!ckpt 2 final')"
}

@test "the part: its header's hash, the position and the XXH3 of the source" {
    mk_data 10 >d.csv
    printf '# a comment\n' >>d.csv
    stream-ingest --every 4 d.csv >out
    part 3 out >p3
    # the header's size and hash are those of the decoded part
    local head
    head=$(grep '^#!part 3 ' out)
    assert_equal "$head" "#!part 3 0 stream-ingest $(stat -c %s p3) $(xxh3 p3)"
    # the final cut: the whole file passed; its hash the file's XXH3-64
    run -0 cat p3
    assert_output "$(printf '%s\n' 'format: stream-ingest-state/1' 'file: 0' \
        "offset: $(stat -c %s d.csv)" 'line: 11' "bytes: $(stat -c %s d.csv)" 'lines: 11' \
        'records: 10' 'skipped: 0' 'chain: 0000000000000000' "xxh3: $(xxh3 d.csv)")"
    # the first cut: after record 4
    run -0 part 1 out
    assert_line "bytes: $(head -n 4 d.csv | wc -c)"
    assert_line 'records: 4'
    head -n 4 d.csv >first4
    assert_line "xxh3: $(xxh3 first4)"
    # the same source, the same parts: nothing of the time or the run in them
    run -0 cmp out <(stream-ingest --every 4 d.csv)
}

@test "a cut line in the source is refused naming FILE:LINE; --on-error=skip drops and counts it" {
    printf '1,a\n2,b\n#!ckpt 5\n3,c\n' >a.csv
    run -1 --separate-stderr stream-ingest a.csv
    assert_regex "$stderr" "^stream-ingest: a.csv:3: a cut line in the source .*'#!ckpt 5'"
    printf '1,a\n#=AAAA\n#!ckpt-bogus\n2,b\n' >b.csv
    run -1 --separate-stderr stream-ingest b.csv
    assert_regex "$stderr" 'b.csv:2: a cut line in the source'
    run -0 --separate-stderr stream-ingest --on-error=skip a.csv b.csv
    refute_line '#!ckpt 5'
    refute_line '#=AAAA'
    refute_line '#!ckpt-bogus'
    assert_regex "$stderr" 'skipped 3 bad records \(first: a.csv:3: '
    printf '%s\n' "$output" >out
    run -0 part 1 out
    assert_line 'skipped: 3'
    assert_line 'records: 5'
    assert_line 'file: 1'
    assert_line 'line: 4'
}

@test "a write error is exit 1; a reader that goes away ends it quietly" {
    mk_data 10 >d.csv
    run -1 --separate-stderr to_full stream-ingest d.csv
    assert_regex "$stderr" 'write error'
    mk_data 20000 >big.csv
    run -0 --separate-stderr sh -c 'stream-ingest --every 10 big.csv | head -n 1'
    assert_output '#!ckpt-start 0 1'
    assert_equal "$stderr" ""
}

# ---- barriers in time and on signals ----------------------------------------------

@test "SIGUSR1 makes a barrier while the source is idle, and SIGTERM a stop one: exit 0" {
    head_bg -v
    printf '1,a\n2,b\n' >&5
    wait_for_match out '^2,b$' || fail "the records did not pass while the source is open"
    kill -USR1 "$HEAD_PID"
    wait_for_match out '^#!ckpt-end 1$' || fail "no barrier on SIGUSR1"
    run -0 records_before_barriers out
    assert_output '2 #!ckpt 1'
    # always one: a second SIGUSR1 with nothing new makes another
    kill -USR1 "$HEAD_PID"
    wait_for_match out '^#!ckpt-end 2$' || fail "no second barrier on SIGUSR1"
    printf '3,c\n' >&5
    wait_for_match out '^3,c$' || fail "record 3 did not pass"
    kill -TERM "$HEAD_PID"
    bg_exit 0
    HEAD_PID=
    run -0 records_before_barriers out
    assert_output "$(printf '2 #!ckpt 1\n2 #!ckpt 2\n3 #!ckpt 3 stop')"
    assert_equal "$(tail -n 1 out)" '#!ckpt-end 3'
    run -0 part 3 out
    assert_line 'records: 3'
    run -0 grep -c '^stream-ingest: cut [123] at record [23] (byte [0-9]*)' err
    assert_output 3
}

@test "--interval fires while the source is idle, and not again until something new passed" {
    head_bg --interval 0.2
    printf '1,a\n2' >&5 # the second line not yet whole
    wait_for_match out '^#!ckpt-end 1$' || fail "no barrier from --interval while idle"
    # the barrier lies before the partial line
    run -0 part 1 out
    assert_line 'bytes: 4'
    assert_line 'records: 1'
    sleep 1 # five intervals with nothing new: no barrier
    run -0 grep -c '^#!ckpt [0-9]' out
    assert_output 1
    printf ',b\n' >&5
    wait_for_match out '^#!ckpt-end 2$' || fail "no barrier after new bytes"
    run -0 part 2 out
    assert_line 'bytes: 8'
    exec 5>&-
    bg_exit 0
    HEAD_PID=
    run -0 records_before_barriers out
    assert_output "$(printf '1 #!ckpt 1\n2 #!ckpt 2\n2 #!ckpt 3 final')"
}

# ---- resuming by reading the source again ------------------------------------------

@test "SIGTERM mid-stream, --resume on every stage: the end of an uninterrupted run, byte for byte" {
    fixture
    ref
    pipe_bg ck -m spec.yaml -- -v --every 5
    feed 1 22
    wait_for_match err 'cut 4 at record 20' || fail "no cut 4: $(cat err)"
    kill -TERM "$HEAD_PID"
    bg_exit 0
    HEAD_PID=
    exec 5>&-
    run -0 grep -E 'cut [0-9]+ at record [0-9]+ \(byte [0-9]+\), stop$' err
    # the resumed head starts with the cut it resumes from and goes on
    # counting --every from the source's start
    local k
    k=$(sed -n 's/^cut: {id: \([0-9]*\),.*/\1/p' ck/latest/manifest.yaml)
    [[ -n $k ]] || fail "ck/latest is no cut"
    run -0 stream-ingest --every 5 --resume ck d.csv
    assert_line --index 0 "#!ckpt-start $k 1"
    run -0 records_before_barriers <(printf '%s\n' "$output")
    assert_line --index 0 --regexp "^[0-9]+ #!ckpt $((k + 1))\$"
    stream-ingest -q --every 5 --resume ck d.csv | sgd-train -q --resume ck --ckpt-dir ck \
        >/dev/null || fail "the resumed pipeline failed"
    same_end ck
}

@test "--resume refuses a source that is not the one the cut was taken on" {
    fixture
    ref
    # a byte changed, a shorter source, another file count
    sed '3s/^./9/' d.csv >other.csv
    run -1 --separate-stderr stream-ingest --resume ref other.csv
    assert_regex "$stderr" "other.csv is not the stream cut [0-9]+ was taken on: its first $(stat -c %s d.csv) bytes differ"
    assert_equal "$output" ""
    head -n 20 d.csv >short.csv
    run -1 --separate-stderr stream-ingest --resume ref <short.csv
    assert_regex "$stderr" "stdin is not the stream cut [0-9]+ was taken on: it has $(stat -c %s short.csv) bytes"
    head -n 20 d.csv >a.csv
    tail -n 20 d.csv >b.csv
    run -1 --separate-stderr stream-ingest --resume ref a.csv b.csv
    assert_regex "$stderr" 'the FILEs are not the ones cut'
    # the same source resumed at its final cut: nothing more to pass
    run -0 stream-ingest --resume ref d.csv
    refute_line --regexp '^[^#]'
    assert_line --regexp '^#!ckpt [0-9]+ final$'
    # a checkpoint that is no cut
    sgd-train -q -m spec.yaml -o plain <d.csv >/dev/null
    run -1 --separate-stderr stream-ingest --resume plain d.csv
    assert_regex "$stderr" '^stream-ingest: --resume plain: '
}

@test "--resume parses the part strictly, naming the checkpoint" {
    fixture
    ref
    local c h old
    c=$(cd ref && readlink latest)
    old=$(xxh3 "ref/$c/stage-0.stream-ingest")
    sed -i 's/^records: /recordz: /' "ref/$c/stage-0.stream-ingest"
    h=$(xxh3 "ref/$c/stage-0.stream-ingest")
    sed -i "s/$old/$h/g" "ref/$c/manifest.yaml"
    reseal "ref/$c/manifest.yaml"
    run -1 --separate-stderr stream-ingest --resume ref d.csv
    assert_regex "$stderr" "^stream-ingest: --resume ref: the part of stage 0 \(stream-ingest\) of cut [0-9]+: line 7: unknown key 'recordz'"
}

# ---- the ingestion log ------------------------------------------------------------

@test "--log: every chunk framed and hashed in segments named by offset; rotation" {
    need python3 python3
    mk_data 200 >d.csv
    mkdir ck
    stream-ingest -v --log L --ckpt-dir ck --log-segment 1000 d.csv >out 2>err
    run -0 grep -c '^stream-ingest: --log L: seg-[0-9a-f]\{16\} begun$' err
    (($(ls L | wc -l) >= 6)) || fail "$(ls L | wc -l) segments for $(stat -c %s d.csv) bytes"
    # frames: magic, contiguous offsets from each segment's name, each
    # segment rotated at 1000 bytes; the data together is the source
    python3 - L d.csv >frames <<'EOF' || fail "the frames do not check"
import os, struct, sys
d, src = sys.argv[1], open(sys.argv[2], 'rb').read()
segs = sorted(os.listdir(d))
at, data, n = 0, b'', 0
for s in segs:
    assert s == 'seg-%016x' % at, (s, at)
    b = open(os.path.join(d, s), 'rb').read()
    assert s == segs[-1] or len(b) >= 1000, (s, len(b))
    i = 0
    while i < len(b):
        magic, ln, off, h, hh = struct.unpack('<4sIQQQ', b[i:i + 32])
        assert magic == b'MNL1' and off == at and 0 < ln <= 1000, (s, i)
        chunk = b[i + 32:i + 32 + ln]
        open('frame-%d' % n, 'wb').write(chunk)
        print('frame-%d %016x' % (n, h))
        data, at, i, n = data + chunk, at + ln, i + 32 + ln, n + 1
assert data == src
EOF
    # and each frame's hash is its data's
    local f h
    while read -r f h; do
        assert_equal "$(xxh3 "$f")" "$h"
    done <frames
}

@test "--log: a log that holds segments is refused without --resume; a log in use is refused" {
    mk_data 20 >d.csv
    mkdir ck
    stream-ingest --log L --ckpt-dir ck d.csv >/dev/null
    run -1 --separate-stderr stream-ingest --log L --ckpt-dir ck d.csv
    assert_regex "$stderr" '^stream-ingest: --log L holds the log of another run \(1 segment\): resume it \(--resume\), or empty it'
    assert_equal "$output" ""
    rm -r L
    head_bg --log L --ckpt-dir ck
    run -1 --separate-stderr stream-ingest --log L --ckpt-dir ck d.csv
    assert_regex "$stderr" 'another stream-ingest is using it'
    kill -TERM "$HEAD_PID"
    bg_exit 0
    HEAD_PID=
}

@test "--log: killed with SIGKILL on a FIFO, resumed from the log and the FIFO: the same end" {
    fixture
    ref
    pipe_bg ck -m spec.yaml -- --every 5 --log L --ckpt-dir ck --log-segment 200
    feed_cuts 3 5
    # three more records read and logged, in no cut: then killed
    local before
    before=$(log_bytes L)
    feed 16 18
    local n=100
    until (($(log_bytes L) > before)); do ((n-- > 0)) || fail "not logged"; sleep 0.1; done
    kill -9 "$HEAD_PID"
    bg_exit 1
    HEAD_PID=
    exec 5>&-
    # what was read is gone from the FIFO: the log has it
    pipe_bg ck --resume ck -- --every 5 --log L --ckpt-dir ck --log-segment 200 --resume ck
    feed 19 40
    exec 5>&-
    bg_exit 0
    HEAD_PID=
    same_end ck
}

@test "--log: a torn last frame is dropped with a note; a file source goes on from the log's end" {
    fixture
    ref
    pipe_bg ck -m spec.yaml -- --every 5 --log L --ckpt-dir ck --log-segment 200
    feed_cuts 2 5
    local before
    before=$(log_bytes L)
    feed 11 13
    local n=100
    until (($(log_bytes L) > before)); do ((n-- > 0)) || fail "not logged"; sleep 0.1; done
    kill -9 "$HEAD_PID"
    bg_exit 1
    HEAD_PID=
    exec 5>&-
    local last
    last=$(ls L/seg-* | tail -n 1)
    truncate -s -3 "$last"
    stream-ingest --every 5 --log L --ckpt-dir ck --resume ck <d.csv 2>err |
        sgd-train -q --resume ck --ckpt-dir ck >/dev/null || fail "the resume failed: $(cat err)"
    run -0 cat err
    assert_output --regexp "^stream-ingest: --log L: ${last#L/}: a frame's data cut short at byte [0-9]+: [0-9]+ bytes dropped"
    same_end ck
    # a damaged frame that is not the last is refused
    printf 'X' | dd of="$(ls L/seg-* | head -n 1)" bs=1 seek=40 conv=notrunc 2>/dev/null
    run -1 --separate-stderr stream-ingest --log L --ckpt-dir ck --resume ck d.csv
    assert_regex "$stderr" 'damaged'
}

@test "--log on a FIFO: a frame whose header a kill kept from being written keeps its data" {
    need python3 python3
    fixture
    ref
    local how
    # the whole header a hole (killed between the data and its header), or
    # half of it written
    for how in hole torn; do
        rm -rf ck L
        pipe_bg ck -m spec.yaml -- --every 5 --log L --ckpt-dir ck --log-segment 4096
        feed_cuts 2 5
        local before
        before=$(log_bytes L)
        feed 11 13
        local n=100
        until (($(log_bytes L) > before)); do ((n-- > 0)) || fail "not logged"; sleep 0.1; done
        kill -9 "$HEAD_PID"
        bg_exit 1
        HEAD_PID=
        exec 5>&-
        # records 11 to 13 are in the last frame, and nowhere else (the FIFO
        # gave them up): its header made as a kill would have left it
        python3 - L "$how" <<'PYEOF2' || fail "no last frame to unwrite"
import os, struct, sys
d, how = sys.argv[1], sys.argv[2]
seg = os.path.join(d, sorted(os.listdir(d))[-1])
b = bytearray(open(seg, 'rb').read())
i = last = 0
while i < len(b):
    last = i
    i += 32 + struct.unpack('<I', b[i + 4:i + 8])[0]
end = 32 if how == 'hole' else 13
b[last:last + end] = bytes(end)
open(seg, 'wb').write(b)
PYEOF2
        # resumed on the FIFO, which goes on with record 14: 11 to 13 come
        # from the log alone
        pipe_bg ck --resume ck -- --every 5 --log L --ckpt-dir ck --log-segment 4096 --resume ck
        feed 14 40
        exec 5>&-
        bg_exit 0
        HEAD_PID=
        run -0 cat err
        assert_output --regexp "^stream-ingest: --log L: seg-[0-9a-f]{16}: the last frame's header was not written at byte [0-9]+ \(a stop while it was logged\): its $(sed -n 11,13p d.csv | wc -c) bytes, taken from the source, kept"
        same_end ck
    done
}

@test "--log: the segments before the newest committed cut's block are removed" {
    mk_spec spec.yaml
    mk_data 3000 >d.csv
    pipe_bg ck -m spec.yaml -- -v --every 600 --log L --ckpt-dir ck --log-segment 16384
    # four cuts committed; the fourth lies beyond the first block of 64 KiB
    feed_cuts 4 600
    [[ -e L/seg-0000000000000000 ]] || fail "the first segment went early"
    local at
    at=$(head -n 2400 d.csv | wc -c)
    ((at > 65536)) || fail "cut 4 at byte $at: the data is too short for this test"
    # the next barrier removes what lies before byte 65536
    feed 2401 3000
    wait_for_match paths '-c5$' 300 || fail "cut 5 not committed"
    [[ ! -e L/seg-0000000000000000 ]] || fail "the first segment is still there"
    run -0 grep -c 'removed: cut 4 is past it' err
    local first
    first=$(ls L | head -n 1)
    ((16#${first#seg-} <= 65536)) || fail "$first: a segment of the cut's block was removed"
    exec 5>&-
    bg_exit 0
    HEAD_PID=
}
