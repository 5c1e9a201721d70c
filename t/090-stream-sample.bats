#!/usr/bin/env bats
# 090-stream-sample: samples of a stream.  Every mode (Bernoulli, 1 in N,
# uniform, weighted, per-class and time-decayed reservoirs), '#' lines passed
# through in order, determinism from --seed, emissions at the end, every N
# records and on SIGUSR1, statistical checks with fixed seeds, and bad input.
#
# The statistical tests are deterministic (fixed seeds).  Each bound sits
# about 4 standard deviations from the statistic's mean under a correct
# sampler (the arithmetic is beside each test; chi-square statistics are
# skewed, so 4 sd above their mean is passed about 999 times in 1000), so
# that a correct sampler passes for nearly every seed set while a biased one
# (one that keeps the first K records, skips every other record, never
# replaces one slot, or ignores the weights) fails by far.  Each test was run
# on 20 seed sets: the ranges seen are in the comments.

bats_require_minimum_version 1.5.0
load helpers

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    BG_PID=
}

teardown() {
    exec 7>&- 2>/dev/null || true
    if [[ -n ${BG_PID:-} ]]; then kill "$BG_PID" 2>/dev/null || true; fi
}

# ---- fixtures and checks ------------------------------------------------------

# recs N: N records 'label,i,0.5' for i = 1..N, label i % 3: field 2 names the
# record, so every line is unique
recs() {
    awk -v n="$1" 'BEGIN { for (i = 1; i <= n; i++) print i % 3 "," i ",0.5" }'
}

# subset_in_order IN OUT: every line of OUT that is not a '#' line is a
# record of IN, and they come in IN's order, none twice
subset_in_order() {
    awk 'NR == FNR { if ($0 !~ /^#/) pos[$0] = FNR; next }
         /^#/ { next }
         !($0 in pos) { printf "not in the input: %s\n", $0; bad = 1; exit }
         pos[$0] <= last { printf "out of input order or repeated: %s\n", $0; bad = 1; exit }
         { last = pos[$0] }
         END { exit bad }' "$1" "$2"
}

# data_lines FILE: the number of lines of FILE that are not '#' lines
data_lines() {
    grep -vc '^#' "$1" || true
}

# skeleton FILE: FILE with every record replaced by 'R' ('#' lines kept)
skeleton() {
    sed 's/^[^#].*/R/' "$1"
}

# split_emissions OUT PREFIX: each emission of OUT (the records after a
# '# stream-sample: ' line) to PREFIX1, PREFIX2, ...; prints their number
split_emissions() {
    awk -v p="$2" '/^# stream-sample: / { n++; f = p n; printf "" >f; next }
                   /^#/ { next }
                   n { print >f }
                   END { print n + 0 }' "$1"
}

# below X LIMIT: X < LIMIT (floating point)
below() {
    awk -v x="$1" -v l="$2" 'BEGIN { exit !(x < l) }'
}

# inclusion_chi FILE RUNS P N: how far the records 1..N (field 2) of FILE,
# the output of RUNS runs that each take a record with probability P, are
# from RUNS * P each: the sum of (o - e)^2 / (e (1 - P))
inclusion_chi() {
    awk -F, -v runs="$2" -v p="$3" -v n="$4" '{ c[$2]++ }
        END { e = runs * p; for (i = 1; i <= n; i++) x += (c[i] - e) ^ 2 / (e * (1 - p)); print x }' "$1"
}

# The waits below poll for a condition with a bound far above what it takes
# on a loaded machine (30 s): a correct program passes as soon as it gets
# there, a wrong one fails however long the bound.

# wait_for_count FILE REGEX COUNT [TENTHS]: wait until FILE has COUNT lines
# matching REGEX (default at most 30 s)
wait_for_count() {
    local f=$1 re=$2 c=$3 n=${4:-300} got
    while ((n-- > 0)); do
        got=$(grep -Ec -- "$re" "$f" 2>/dev/null)
        ((${got:-0} >= c)) && return 0
        sleep 0.1
    done
    return 1
}

# wait_usr1_caught PID: wait until process PID has a SIGUSR1 handler
# (SigCgt bit 10 in /proc/PID/status, at most 30 s), so that the signal
# cannot kill it
wait_usr1_caught() {
    local n=300 mask
    while ((n-- > 0)); do
        mask=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null)
        [[ -n $mask ]] && (((0x$mask >> 9) & 1)) && return 0
        sleep 0.1
    done
    return 1
}

# ---- the command line -------------------------------------------------------------

@test "--help on stdout, exit 0; --version" {
    run -0 --separate-stderr stream-sample --help
    assert_line --index 0 "Usage: stream-sample MODE [OPTION]... [FILE]"
    assert_output --partial "Exit status: 0 success, 1 data or runtime error, 2 usage error"
    assert_equal "$stderr" ""
    local long=$output
    run -0 --separate-stderr stream-sample -h
    assert_equal "$output" "$long"
    run -0 --separate-stderr stream-sample --version
    assert_output "stream-sample (mini-nn) 0.1.0"
    assert_equal "$stderr" ""
    run -0 stream-sample -V </dev/null
    assert_output "stream-sample (mini-nn) 0.1.0"
}

@test "usage errors: exit 2 with a hint, nothing on stdout" {
    recs 10 >r.csv
    local args
    for args in "" "-p 0" "-p 1.5" "-p -0.1" "-p x" "-p nan" "-p inf" "-p ''" \
        "-k 0" "-k x" "-k -1" "-k 1.5" "--every 0" "--every x" "--per-class 0" "--per-class x" \
        "--per-class -2" "-k 3 -p 0.5" "--every 2 -k 3" "-k 3 --per-class 3" \
        "--weight-col 2" "-p 0.5 --weight-col 2" "--per-class 2 --weight-col 2" \
        "--decay 0.1" "--every 2 --decay 0.1" "-k 3 --decay 0" "-k 3 --decay -1" "-k 3 --decay x" \
        "-k 3 --decay inf" "-k 3 --weight-col 0" "-k 3 --weight-col x" \
        "-k 3 --weight-col 2 --decay 0.1" "-p 0.5 --emit-every 3" "--every 3 --emit-every 3" \
        "-k 3 --emit-every 0" "-k 3 --seed x" "-k 3 --seed -1" "-k 3 --on-error=bogus" \
        "-k 3 r.csv r.csv" "-k 3 --no-such-option" "-k"; do
        eval "run -2 --separate-stderr stream-sample $args <r.csv"
        assert_equal "$output" ""
        # (getopt's own message, if any, may name the program by its path)
        assert_regex "$stderr" "^(.*/)?(lt-)?stream-sample: "
        assert_regex "$stderr" "Try 'stream-sample --help'"
    done
}

@test "a missing FILE: exit 1 naming it, nothing on stdout" {
    run -1 --separate-stderr stream-sample -k 3 nofile.csv
    assert_regex "$stderr" '^stream-sample: nofile\.csv: No such file or directory'
    assert_output ""
}

@test "FILE, '-' and stdin give the same sample" {
    recs 100 >r.csv
    stream-sample -k 7 --seed 3 <r.csv >a
    run -0 stream-sample -k 7 --seed 3 r.csv
    assert_output "$(cat a)"
    run -0 stream-sample -k 7 --seed 3 - <r.csv
    assert_output "$(cat a)"
    assert_equal "$(data_lines a)" 7
}

# ---- modes -----------------------------------------------------------------------

@test "-p 1 copies every record and '#' line, unchanged, in order; empty lines dropped" {
    printf '# head\n0,1,2\n\n#!note 7\n1 1:0.5 3:2\n2\t3\t4\n# tail\n' >in.txt
    run -0 --separate-stderr stream-sample -p 1 in.txt
    assert_output "$(printf '# head\n0,1,2\n#!note 7\n1 1:0.5 3:2\n2\t3\t4\n# tail')"
    assert_equal "$stderr" ""
}

@test "--every N: records 1, N+1, 2N+1, ... exactly, '#' lines in place, seed irrelevant" {
    { recs 10; echo '# mid'; recs 20 | tail -n +11; } >in.txt
    run -0 stream-sample --every 3 in.txt
    assert_output "$(printf '1,1,0.5\n1,4,0.5\n1,7,0.5\n1,10,0.5\n# mid\n1,13,0.5\n1,16,0.5\n1,19,0.5')"
    run -0 stream-sample --every 3 --seed 99 in.txt
    assert_output "$(printf '1,1,0.5\n1,4,0.5\n1,7,0.5\n1,10,0.5\n# mid\n1,13,0.5\n1,16,0.5\n1,19,0.5')"
    run -0 stream-sample --every 1 in.txt
    assert_output "$(cat in.txt)"
    run -0 stream-sample --every 100 in.txt
    assert_output "$(printf '1,1,0.5\n# mid')"
}

@test "-p P: a subset in input order, its size within a binomial bound" {
    recs 20000 >r.csv
    local s n
    for s in 1 2 3; do
        stream-sample -p 0.1 --seed "$s" r.csv >out.$s
        subset_in_order r.csv out.$s || fail "-p 0.1 --seed $s"
        # Binomial(20000, 0.1): mean 2000, sd sqrt(20000 * 0.1 * 0.9) =
        # 42.43; +-4 sd = 2000 +- 169.7 (seeds 1..20: 1925..2066; one that
        # never takes an even-numbered record: about 1000)
        n=$(data_lines out.$s)
        ((n > 1830 && n < 2170)) || fail "-p 0.1 --seed $s took $n of 20000 records"
    done
    run -1 cmp -s out.1 out.2
    stream-sample -p 0.5 --seed 4 r.csv >half
    subset_in_order r.csv half || fail "-p 0.5"
    # mean 10000, sd sqrt(20000 * 0.5 * 0.5) = 70.71; +-4 sd = 10000 +- 282.8
    # (seeds 1..20: 9869..10142)
    n=$(data_lines half)
    ((n > 9717 && n < 10283)) || fail "-p 0.5 took $n of 20000 records"
    stream-sample -p 0.001 --seed 5 r.csv >few
    # mean 20, sd sqrt(20000 * 0.001 * 0.999) = 4.47; +-4 sd = 20 +- 17.9
    # (exact tails: P(n <= 2) = 4.5e-7, P(n >= 38) = 2.2e-4; seeds 1..20: 11..30)
    n=$(data_lines few)
    ((n > 2 && n < 38)) || fail "-p 0.001 took $n of 20000 records"
}

@test "-p P: every position is taken with probability P (chi-square over 100 seeds)" {
    recs 20 >r.csv
    local s
    for s in $(seq 100); do
        stream-sample -p 0.3 --seed "$s" r.csv || fail "--seed $s"
    done >all
    # independent Bernoulli(0.3) per position and run: the count o of a
    # position is Binomial(100, 0.3), z = (o - 30) / sqrt(21).  The sum of z^2
    # over the 20 positions has mean 20 and variance 20 (E z^4 - 1) =
    # 20 (2 + (1 - 6 * 0.21) / 21) = 39.75, sd 6.30: mean + 4 sd = 45.2.
    # (Seed sets 100j+1..100j+100, j = 0..19: 10.7..35.8.  Never taking an
    # even-numbered record: about 435.)
    local chi
    chi=$(inclusion_chi all 100 0.3 20)
    below "$chi" 45.2 || fail "chi-square $chi >= 45.2: positions not taken with probability 0.3"
}

@test "-k K: exactly K records when there are K or more, all of them when fewer, in input order" {
    recs 1000 >r.csv
    local k s
    for k in 1 10 100 999 1000; do
        for s in 1 2; do
            stream-sample -k "$k" --seed "$s" r.csv >out
            assert_equal "$(data_lines out)" "$k"
            subset_in_order r.csv out || fail "-k $k --seed $s"
        done
    done
    run -0 stream-sample -k 1000 r.csv
    assert_output "$(cat r.csv)"
    recs 5 >five.csv
    run -0 stream-sample -k 10 five.csv
    assert_output "$(cat five.csv)"
    run -0 stream-sample -k 3 </dev/null
    assert_output ""
    # '#' lines only: passed through, no sample
    run -0 stream-sample -k 3 <<<'# only a comment'
    assert_output "# only a comment"
}

@test "-k K: every record is in the sample with probability K/N (chi-square over 200 seeds)" {
    recs 20 >r.csv
    local s
    for s in $(seq 200); do
        stream-sample -k 5 --seed "$s" r.csv || fail "--seed $s"
    done >all
    assert_equal "$(data_lines all)" 1000
    # inclusion counts of the 20 records: expected 200 * 5/20 = 50 each.
    # Each count has variance R p (1 - p) = 37.5 exactly, so the sum S of
    # (o - e)^2 / 37.5 has mean N = 20; sampling without replacement makes
    # the counts' covariance R p (1 - p) N/(N - 1) (I - J/N), so S is about
    # N/(N - 1) times a chi-square with N - 1 = 19 degrees of freedom:
    # variance 2 N^2/(N - 1) = 42.1, sd 6.49, mean + 4 sd = 46.0 (simulated:
    # mean 19.9, sd 6.48).  (Seed sets 200j+1..200j+200, j = 0..19:
    # 13.1..34.9.  A sampler that keeps the first 5 scores 4000; one that
    # skips every other record once full about 1030; one that never
    # replaces its last slot about 660.)
    local chi
    chi=$(inclusion_chi all 200 0.25 20)
    below "$chi" 46.0 || fail "chi-square $chi >= 46.0: reservoir inclusion is not uniform"
}

@test "the same input and seed give the same bytes; another seed another sample" {
    recs 2000 >r.csv
    awk -F, '{ print $0 "," (NR % 7) }' r.csv >w.csv
    local mode
    for mode in "-p 0.2" "-k 20" "-k 20 --weight-col 4" "-k 20 --decay 0.001" "--per-class 5" \
        "-k 20 --emit-every 500"; do
        stream-sample $mode --seed 42 w.csv >a
        stream-sample $mode --seed 42 <w.csv >b
        cmp a b || fail "$mode --seed 42: two runs differ"
        stream-sample $mode --seed 43 w.csv >c
        run -1 cmp -s a c
        [[ -s a ]] || fail "$mode: empty sample"
    done
    # the default seed is 1
    stream-sample -k 20 w.csv >d
    stream-sample -k 20 --seed 1 w.csv >e
    cmp d e
}

@test "--per-class K: exactly min(K, count) records of each class, in input order" {
    # classes 0, 1, 2, 5, 9 with 3, 50, 10, 200, 7 records, shuffled
    awk 'BEGIN {
        split("0 1 2 5 9", cl, " "); split("3 50 10 200 7", cnt, " ")
        s = 12345; id = 0
        for (c = 1; c <= 5; c++)
            for (j = 0; j < cnt[c]; j++) {
                s = (s * 16807) % 2147483647
                printf "%d,%d,%d\n", s, cl[c], ++id
            }
    }' | sort -t, -k1,1n | cut -d, -f2- >pc.csv
    assert_equal "$(wc -l <pc.csv)" 270
    local s
    for s in 1 2 3; do
        stream-sample --per-class 10 --seed "$s" pc.csv >out
        subset_in_order pc.csv out || fail "--per-class 10 --seed $s"
        run -0 bash -c "cut -d, -f1 out | sort -n | uniq -c | awk '{ print \$2 \":\" \$1 }' | paste -sd' '"
        assert_output "0:3 1:10 2:10 5:10 9:7"
    done
    run -0 stream-sample --per-class 1000 pc.csv
    assert_output "$(cat pc.csv)"
    # a label written as a real that is an integer is that class
    printf '2.0,a\n1e0,b\n2,c\n0,d\n' >real.csv
    run -0 stream-sample --per-class 5 real.csv
    assert_output "$(cat real.csv)"
}

@test "--per-class: every record of a class is drawn with probability K/count (chi-square over 100 seeds)" {
    # class 1: records 5, 10, 15; class 0: the 13 others
    awk 'BEGIN { for (i = 1; i <= 16; i++) print (i % 5 == 0 ? 1 : 0) "," i }' >pc.csv
    local s
    for s in $(seq 100); do
        stream-sample --per-class 3 --seed "$s" pc.csv || fail "--seed $s"
    done >all
    # every class 1 record every time; class 0: 100 * 3/13 = 23.1 each.  As
    # for -k K (N = 13 records, 3 of them per run): mean 13, variance
    # 2 * 13^2/12 = 28.2, sd 5.31, mean + 4 sd = 34.2 (simulated: mean 13.0,
    # sd 5.24).  (Seed sets 100j+1..100j+100, j = 0..19: 4.1..23.7; keeping
    # the first 3 of each class: 1300.)
    run -0 awk -F, '$1 == 1 { c1++ } END { print c1 }' all
    assert_output 300
    assert_equal "$(data_lines all)" 600
    local chi
    chi=$(awk -F, -v runs=100 -v p="$(awk 'BEGIN { print 3 / 13 }')" '$1 == 0 { c[$2]++ }
        END { e = runs * p; for (i = 1; i <= 16; i++) if (i % 5) x += (c[i] - e) ^ 2 / (e * (1 - p)); print x }' all)
    below "$chi" 34.2 || fail "chi-square $chi >= 34.2: per-class inclusion is not uniform"
}

@test "--weight-col: weight 0 is never drawn, a huge weight always; idx:val and tab fields" {
    # field 4 is the weight: 0 for every 10th record, 1e12 for record 777
    recs 2000 | awk -F, '{ w = ($2 % 10 == 0) ? 0 : 1 + $2 % 5; if ($2 == 777) w = 1e12; print $0 "," w }' >w.csv
    local s
    for s in 1 2 3 4 5; do
        stream-sample -k 20 --weight-col 4 --seed "$s" w.csv >out
        assert_equal "$(data_lines out)" 20
        subset_in_order w.csv out || fail "--seed $s"
        run -0 grep -c '^[0-9],777,' out
        assert_output 1
        run -1 grep -E ',0$' out
    done
    # fewer records of weight > 0 than K: all of those, none of weight 0
    printf '0,a,0\n1,b,2\n0,c,0\n1,d,0.5\n' >few.csv
    run -0 stream-sample -k 3 --weight-col 3 few.csv
    assert_output "$(printf '1,b,2\n1,d,0.5')"
    # the value of an idx:val field; tab-separated fields
    printf '0 1:0 2:1\n1 1:5 2:1\n0 1:0 2:1\n' >w.svm
    run -0 stream-sample -k 2 --weight-col 2 w.svm
    assert_output "1 1:5 2:1"
    printf '0\t0\n1\t3\n0\t0\n' >w.tsv
    run -0 stream-sample -k 2 --weight-col 2 w.tsv
    assert_output "$(printf '1\t3')"
}

@test "--weight-col: inclusion probabilities match sampling without replacement (chi-square over 200 seeds)" {
    # 8 records of weights 8 1 4 2 1 6 3 5 (sum 30), K = 2
    awk 'BEGIN { split("8 1 4 2 1 6 3 5", w, " "); for (i = 1; i <= 8; i++) print "0," i "," w[i] }' >w.csv
    local s
    for s in $(seq 200); do
        stream-sample -k 2 --weight-col 3 --seed "$s" w.csv || fail "--seed $s"
    done >all
    assert_equal "$(data_lines all)" 400
    # P(i in the sample) = w_i/W + sum_{j != i} (w_j/W) (w_i/(W - w_j)):
    # drawn first, or second after j.  The sum S over records of
    # (o - R P)^2 / (R P (1 - P)) has mean 8 (each count is Binomial(R, P));
    # with P(i and j) = (w_i/W) (w_j/(W - w_i)) + (w_j/W) (w_i/(W - w_j)) the
    # correlation matrix C of the counts gives variance 2 tr(C^2) = 18.36, sd
    # 4.28: mean + 4 sd = 25.1 (simulated: mean 8.04, sd 4.33).  And no count
    # more than 4.5 sd from its expectation: 8 counts at 4.5 sd each are
    # passed as often as one at 4 sd (P(|z| > 4.5) = 6.8e-6 each, 5.4e-5 for
    # the 8; P(|z| > 4) = 6.3e-5).  (Seed sets 200j+1..200j+200, j = 0..19:
    # S 1.4..18.4, largest |z| 3.0.  Ignoring the weights: S 230..290.)
    run -0 awk -F, -v runs=200 'NR == FNR { w[FNR] = $3; W += $3; n = FNR; next } { c[$2]++ }
        END {
            for (i = 1; i <= n; i++) {
                p = w[i] / W
                for (j = 1; j <= n; j++) if (j != i) p += w[j] / W * w[i] / (W - w[j])
                e = runs * p; v = e * (1 - p); x += (c[i] - e) ^ 2 / v
                if ((c[i] - e) ^ 2 > 4.5 ^ 2 * v) printf "record %d: %d drawn, expected %.1f\n", i, c[i], e
            }
            printf "chi2 %.3f\n", x
        }' w.csv all
    refute_output --partial "record"
    below "${output#chi2 }" 25.1 || fail "chi-square ${output#chi2 } >= 25.1"
}

@test "--decay LAMBDA favours recent records" {
    recs 1000 >r.csv
    local s m
    for s in 1 2 3; do
        stream-sample -k 50 --decay 0.01 --seed "$s" r.csv >out
        assert_equal "$(data_lines out)" 50
        subset_in_order r.csv out || fail "--decay --seed $s"
        # weights exp(0.01 i), 50 drawn without replacement (A-Res): the
        # mean index has mean 893.7 and sd 13.6 (simulated, 15000 runs of
        # the same keys): mean - 4 sd = 839.  (Seeds 1..20: 882..910; half
        # the rate, 0.005: 777..815 on seeds 1..3.)
        m=$(awk -F, '{ s += $2 } END { print s / NR }' out)
        below 839 "$m" || fail "--decay 0.01 --seed $s: mean index $m, not above 839"
        # uniform, 50 of 1..1000 without replacement: mean 500.5, variance
        # ((1000^2 - 1)/12)/50 * (1000 - 50)/(1000 - 1) = 1585, sd 39.8;
        # +-4 sd = 500.5 +- 159.2 (seeds 1..20: 424.7..562.7)
        stream-sample -k 50 --seed "$s" r.csv >uni
        m=$(awk -F, '{ s += $2 } END { print s / NR }' uni)
        below 341 "$m" && below "$m" 660 || fail "-k 50 --seed $s: mean index $m, not near 500"
    done
    # a steep decay keeps the last K records
    run -0 stream-sample -k 50 --decay 5 r.csv
    assert_output "$(tail -n 50 r.csv)"
    # a tiny one is close to uniform: the same +-4 sd (seeds 1..20: 395..562)
    stream-sample -k 50 --decay 1e-9 r.csv >flat
    m=$(awk -F, '{ s += $2 } END { print s / NR }' flat)
    below 341 "$m" && below "$m" 660 || fail "--decay 1e-9: mean index $m, not near 500"
}

# ---- '#' lines and emissions ---------------------------------------------------------

@test "'#' lines pass through in order, at their place among the emissions" {
    { echo '# head'; recs 3; echo '# after 3'; recs 6 | tail -n 3; echo '#!note 6'; recs 7 | tail -n 1; echo '# tail'; } >in.txt
    run -0 stream-sample -k 2 --emit-every 3 in.txt
    skeleton <(printf '%s\n' "$output") >sk
    run -0 cat sk
    assert_output "$(printf '%s\n' '# head' '# stream-sample: 2 of 3 records' R R '# after 3' \
        '# stream-sample: 2 of 6 records' R R '#!note 6' '# tail' '# stream-sample: 2 of 7 records' R R)"
    # without --emit-every: the comments as they come, the sample at the end, no marker
    run -0 stream-sample -k 2 in.txt
    skeleton <(printf '%s\n' "$output") >sk
    run -0 cat sk
    assert_output "$(printf '%s\n' '# head' '# after 3' '#!note 6' '# tail' R R)"
    run -0 stream-sample --per-class 1 in.txt
    skeleton <(printf '%s\n' "$output") >sk
    run -0 cat sk
    assert_output "$(printf '%s\n' '# head' '# after 3' '#!note 6' '# tail' R R R)"
    # Bernoulli and 1 in N: in place among the records
    run -0 stream-sample --every 4 in.txt
    assert_output "$(printf '%s\n' '# head' '1,1,0.5' '# after 3' '2,5,0.5' '#!note 6' '# tail')"
}

@test "a '#' line reaches the output while the input is still open (-k)" {
    mkfifo in
    stream-sample -k 3 <in >out 2>err &
    BG_PID=$!
    exec 7>in
    printf '1,1\n#!note 1\n2,2\n' >&7
    wait_for_match out '^#!note 1$' 300 || fail "the '#' line is held back while the input is open"
    exec 7>&-
    bg_exit 0
    run -0 cat out
    assert_output "$(printf '#!note 1\n1,1\n2,2')"
}

@test "--emit-every N: the sample so far after every N records and at the end, each after its marker" {
    recs 10 >r.csv
    stream-sample -k 3 --emit-every 4 --seed 7 r.csv >out
    run -0 grep '^#' out
    assert_output "$(printf '%s\n' '# stream-sample: 3 of 4 records' '# stream-sample: 3 of 8 records' \
        '# stream-sample: 3 of 10 records')"
    assert_equal "$(split_emissions out e)" 3
    local j n
    for j in 1 2 3; do
        assert_equal "$(wc -l <e$j)" 3
        n=$((j == 3 ? 10 : 4 * j))
        head -n "$n" r.csv >upto
        subset_in_order upto e$j || fail "emission $j is not a sample of the first $n records"
    done
    # one reservoir throughout: a record of an emission that was read before
    # the previous one was in the previous one too
    for j in 2 3; do
        n=$((4 * (j - 1)))
        run -0 awk -F, -v n="$n" 'NR == FNR { seen[$0] = 1; next } $2 <= n && !($0 in seen)' e$((j - 1)) e$j
        assert_output ""
    done
    # fewer records than K: all of them each time
    run -0 stream-sample -k 5 --emit-every 2 <(recs 3)
    assert_output "$(printf '%s\n' '# stream-sample: 2 of 2 records' 1,1,0.5 2,2,0.5 \
        '# stream-sample: 3 of 3 records' 1,1,0.5 2,2,0.5 0,3,0.5)"
    # an input that ends at an emission still ends with the final sample
    recs 12 >r12.csv
    stream-sample -k 3 --emit-every 4 r12.csv >out
    run -0 tail -n 4 out
    assert_line --index 0 '# stream-sample: 3 of 12 records'
    # --per-class: R is the sum of the classes' samples
    recs 11 >r.csv
    run -0 bash -c "stream-sample --per-class 2 --emit-every 5 r.csv | grep '^#'"
    assert_output "$(printf '%s\n' '# stream-sample: 5 of 5 records' '# stream-sample: 6 of 10 records' \
        '# stream-sample: 6 of 11 records')"
}

@test "SIGUSR1 emits the sample while the input is still open (--emit-every)" {
    recs 20 >r.csv
    mkfifo in
    stream-sample -k 3 --emit-every 4 <in >out 2>err &
    BG_PID=$!
    exec 7>in
    head -n 4 r.csv >&7
    wait_for_match out '^# stream-sample: 3 of 4 records$' 300 || fail "no emission after 4 records: $(cat err)"
    wait_usr1_caught "$BG_PID" || fail "stream-sample does not catch SIGUSR1"
    kill -USR1 "$BG_PID"
    wait_for_count out '^# stream-sample: ' 2 || fail "no emission on SIGUSR1 while the input is open"
    kill -0 "$BG_PID" || fail "stream-sample ended on SIGUSR1"
    sed -n 5,6p r.csv >&7
    exec 7>&-
    bg_exit 0
    run -0 grep '^#' out
    assert_output "$(printf '%s\n' '# stream-sample: 3 of 4 records' '# stream-sample: 3 of 4 records' \
        '# stream-sample: 3 of 6 records')"
    # the signal's emission is the sample as it stood
    split_emissions out e >/dev/null
    cmp e1 e2 || fail "the SIGUSR1 emission differs from the sample it repeats"
    assert_equal "$(cat err)" ""
}

@test "SIGUSR1 without --emit-every: an emission with its marker, then the final one marked too" {
    recs 20 >r.csv
    mkfifo in
    stream-sample --per-class 2 <in >out 2>err &
    BG_PID=$!
    exec 7>in
    head -n 5 r.csv >&7
    wait_usr1_caught "$BG_PID" || fail "stream-sample does not catch SIGUSR1"
    kill -USR1 "$BG_PID"
    wait_for_match out '^# stream-sample: ' 300 || fail "no emission on SIGUSR1 while the input is open"
    kill -0 "$BG_PID" || fail "stream-sample ended on SIGUSR1"
    tail -n +6 r.csv >&7
    exec 7>&-
    bg_exit 0
    # the first emission came before the end of the input: whatever it had
    # read of the first 5 records (2 per class at most)
    run -0 grep '^#' out
    assert_equal "${#lines[@]}" 2
    assert_regex "${lines[0]}" '^# stream-sample: [0-5] of [0-5] records$'
    assert_equal "${lines[1]}" '# stream-sample: 6 of 20 records'
    split_emissions out e >/dev/null
    head -n 5 r.csv >first5
    subset_in_order first5 e1 || fail "the SIGUSR1 emission is not a sample of the records read"
    subset_in_order r.csv e2
    assert_equal "$(wc -l <e2)" 6
}

# ---- bad input -------------------------------------------------------------------------

@test "a label that is not a number: exit 1, stdin:LINE (comments and empty lines counted), in every mode" {
    printf '0,1\n# c\n\n1,2\ncat,3\n2,4\n' >bad.csv
    local mode
    for mode in "-p 1" "--every 2" "-k 2" "-k 2 --weight-col 2" "-k 2 --decay 0.1" "--per-class 2"; do
        run -1 --separate-stderr stream-sample $mode <bad.csv
        assert_regex "$stderr" "^stream-sample: stdin:5: label 'cat' is not a number"
    done
    run -1 --separate-stderr stream-sample -k 2 bad.csv
    assert_regex "$stderr" "^stream-sample: bad\\.csv:5: label 'cat' is not a number"
    local l
    for l in '' 1x 0x10 nan inf -Infinity 1e999; do
        printf '0,1\n%s,2\n' "$l" >bad.csv
        run -1 --separate-stderr stream-sample -k 2 <bad.csv
        assert_regex "$stderr" "^stream-sample: stdin:2: label '$l' is not (a number|finite)"
    done
}

@test "--on-error=skip: bad records left out, counted at the end; the first five reported" {
    recs 100 | awk '{ print } NR % 10 == 0 { print "x" NR ",1,0.5" }' >dirty.csv
    run -0 --separate-stderr stream-sample -p 1 --on-error=skip dirty.csv
    assert_output "$(recs 100)"
    assert_regex "$stderr" "stream-sample: skipped 10 bad records \\(first: dirty\\.csv:11: label 'x10' is not a number\\)"
    # as the other programs do (mini-nn(7)): the first five one by one
    assert_regex "$stderr" "dirty\\.csv:11: label 'x10' is not a number"
    assert_regex "$stderr" "dirty\\.csv:55: label 'x50' is not a number"
    run -0 --separate-stderr stream-sample -k 100 --on-error=skip dirty.csv
    assert_output "$(recs 100)"
    assert_regex "$stderr" "skipped 10 bad records"
    run -0 --separate-stderr stream-sample -k 10 --on-error=skip dirty.csv
    assert_equal "${#lines[@]}" 10
    refute_output --partial "x"
}

@test "a weight that is negative, NaN, infinite, empty or missing: exit 1; skipped with --on-error=skip" {
    local w
    for w in -1 -0.5 nan NaN inf -inf 1e999 x; do
        printf '0,a,1\n1,b,%s\n0,c,2\n' "$w" >bad.csv
        run -1 --separate-stderr stream-sample -k 2 --weight-col 3 <bad.csv
        assert_regex "$stderr" "^stream-sample: stdin:2: weight '?$w'? \\(field 3\\) is (negative|not a finite number)"
        assert_output ""
        run -0 --separate-stderr stream-sample -k 3 --weight-col 3 --on-error=skip <bad.csv
        assert_output "$(printf '0,a,1\n0,c,2')"
        assert_regex "$stderr" "skipped 1 bad record \\(first: stdin:2: weight"
    done
    printf '0,a,1\n1,b,\n' >bad.csv
    run -1 --separate-stderr stream-sample -k 2 --weight-col 3 <bad.csv
    assert_regex "$stderr" "^stream-sample: stdin:2: field 3 \\(the weight\\) is empty"
    printf '0,a,1\n1,b\n' >bad.csv
    run -1 --separate-stderr stream-sample -k 2 --weight-col 3 <bad.csv
    assert_regex "$stderr" "^stream-sample: stdin:2: no field 3 \\(the weight\\)"
    printf '0 1:1\n1 1:\n' >bad.svm
    run -1 --separate-stderr stream-sample -k 2 --weight-col 2 <bad.svm
    assert_regex "$stderr" "^stream-sample: stdin:2: "
}

@test "--per-class: a label that is not a class id (real, negative, too large): exit 1 or skipped" {
    local l
    for l in 1.5 -1 -0.5 1000000 1e7; do
        printf '0,a\n%s,b\n' "$l" >bad.csv
        run -1 --separate-stderr stream-sample --per-class 2 <bad.csv
        assert_regex "$stderr" "^stream-sample: stdin:2: label '$l' is not a class id"
        assert_output ""
    done
    printf '0,a\n1.5,b\n-1,c\n1,d\n' >bad.csv
    run -0 --separate-stderr stream-sample --per-class 2 --on-error=skip <bad.csv
    assert_output "$(printf '0,a\n1,d')"
    assert_regex "$stderr" "skipped 2 bad records \\(first: stdin:2: label '1\\.5' is not a class id"
    # the other modes take any real label
    run -0 stream-sample -p 1 <bad.csv
    assert_output "$(cat bad.csv)"
}

@test "a reader that goes away ends stream-sample quietly" {
    recs 300000 >big.csv
    local mode
    for mode in "-p 1" "--every 1" "-k 300000"; do
        run -0 bash -c 'stream-sample '"$mode"' big.csv 2>err.txt | head -n1; s=("${PIPESTATUS[@]}"); echo "status ${s[0]}"'
        assert_equal "${lines[0]}" "1,1,0.5"
        # killed by SIGPIPE (141) or a quiet exit 0: no error message either way
        assert_regex "${lines[1]}" '^status (0|141)$'
        run -0 cat err.txt
        assert_output ""
    done
}

@test "output to /dev/full: exit 1 with a write error message" {
    recs 100 >r.csv
    local mode
    for mode in "-p 1" "--every 2" "-k 10" "-k 10 --emit-every 20" "--per-class 3"; do
        run -1 --separate-stderr to_full stream-sample $mode r.csv
        assert_regex "$stderr" '^stream-sample: write error.*No space left on device'
    done
    # '#' lines alone are output too
    run -1 --separate-stderr to_full stream-sample -k 10 <<<'# c'
    assert_regex "$stderr" '^stream-sample: write error'
}

@test "-v reports the records read and written; -q keeps stderr quiet" {
    recs 100 >r.csv
    run -0 --separate-stderr stream-sample -v -k 10 r.csv
    assert_regex "$stderr" '^stream-sample: 100 records read, 10 written'
    run -0 --separate-stderr stream-sample -q -k 10 r.csv
    assert_equal "$stderr" ""
}

# ---- pipeline cuts -------------------------------------------------------------------
# Streams as stream-ingest, the head, sends them: a start line, records, and
# barrier blocks with the head's part (empty here); sgd-train commits the
# cuts, and t/mkpart hands it any part, so that resumption is tested from a
# real cut checkpoint, hostile states included.

EMPTY_XXH3=2d06800538d394c2 # XXH3-64 of no bytes: the head's part here
SAMPLE_MODES=("-p 0.5" "--every 3" "-k 3" "-k 3 --emit-every 5" "-k 3 --weight-col 2"
    "-k 3 --decay 0.1" "--per-class 2")

# block ID [stop|final]: a barrier's block as the head sends it
block() {
    printf '#!ckpt %s\n#!part %s 0 stream-ingest 0 %s\n#!ckpt-end %s\n' "$1${2:+ $2}" "$1" \
        "$EMPTY_XXH3" "$1"
}

# recs_from A B: records A..B, as recs makes them
recs_from() {
    awk -v a="$1" -v n="$2" 'BEGIN { for (i = a; i <= n; i++) print i % 3 "," i ",0.5" }'
}

# part_of FILE ID INDEX: the bytes of stage INDEX's part of cut ID in FILE
part_of() {
    awk -v h="#!part $2 $3 " 'index($0, h) == 1 { on = 1; next }
        on && /^#=/ { print substr($0, 3); next } { on = 0 }' "$1" | base64 -d
}

# after_line FILE LINE: the lines of FILE after the first one that is LINE
after_line() {
    awk -v l="$2" 'f { print } $0 == l { f = 1 }' "$1"
}

# mkpart ARGS...: t/mkpart, built by make check
mkpart() {
    [[ -x ${MNN_T:-}/mkpart ]] || skip "t/mkpart is not built (make check builds it)"
    "$MNN_T/mkpart" "$@"
}

# commit_state STATE DIR: a cut 1 of stream-sample's state STATE (sealed
# here), committed by sgd-train into DIR; prints the cut's directory
commit_state() {
    mk_reg_spec spec.yaml
    { echo '#!ckpt-start 0 2'; printf '#!ckpt 1\n#!part 1 0 stream-ingest 0 %s\n' "$EMPTY_XXH3"
      mkpart --seal 1 1 stream-sample "$1"; echo '#!ckpt-end 1'; echo '#!ckpt 2 stop'
      printf '#!part 2 0 stream-ingest 0 %s\n' "$EMPTY_XXH3"; mkpart --seal 2 1 stream-sample "$1"
      echo '#!ckpt-end 2'; } >committed.txt || return 1
    sgd-train -m spec.yaml --ckpt-dir "$2" -q <committed.txt >/dev/null || return 1
    echo "$2"/step-*-c1
}

@test "cuts: the start line goes on with one stage more, the stage's part before each end line, in every mode" {
    { echo '#!ckpt-start 0 1'; recs_from 1 10; block 1; recs_from 11 20; block 2 final; } >in.txt
    for m in "${SAMPLE_MODES[@]}"; do
        # shellcheck disable=SC2086
        run -0 --separate-stderr stream-sample $m in.txt
        printf '%s\n' "$output" >out
        assert_equal "$(head -n 1 out)" '#!ckpt-start 0 2'
        for id in 1 2; do
            # the head's part, then this stage's: index 1, stream-sample, then the end
            run -0 awk -v id="$id" '$0 ~ "^#!ckpt " id "( final)?$" { on = 1 }
                on && $0 == "#!ckpt-end " id { print "end"; exit }
                on && /^#!part / { print $2, $3, $4 } on && !/^#=/ && !/^#!part / && !/^#!ckpt / { exit }' out
            assert_output "$(printf '%s\n' "$id 0 stream-ingest" "$id 1 stream-sample" end)"
            run -0 --separate-stderr bash -c "$(declare -f part_of); part_of out $id 1 | head -n 2"
            [[ ${lines[0]} == 'mini-nn stream-sample state 1' ]] || fail "$m: cut $id: not a state: $output"
            [[ ${lines[1]} == "options ${m% --emit-every*}" ]] || fail "$m: cut $id: options '${lines[1]}'"
        done
        assert_equal "$stderr" ""
    done
}

@test "cuts: a final cut writes the sample before its barrier, the end of the input none; the sample is the one without cuts" {
    { echo '#!ckpt-start 0 1'; recs_from 1 10; block 1; recs_from 11 20; block 2 final; } >in.txt
    for m in "-k 3" "--per-class 2" "-k 3 --weight-col 2" "-k 3 --decay 0.1"; do
        # shellcheck disable=SC2086
        run -0 stream-sample $m --seed 9 in.txt
        printf '%s\n' "$output" >out
        run -0 after_line out '#!ckpt-end 2'
        assert_output ""
        # shellcheck disable=SC2086
        recs 20 | stream-sample $m --seed 9 >plain
        run -0 bash -c "awk '/^#!ckpt 2 final\$/ { exit } /^#!ckpt-end 1\$/ { on = 1; next } on' out"
        assert_output "$(cat plain)"
    done
}

@test "cuts: a stop cut and then the end of the input: no sample written, exit 0" {
    { echo '#!ckpt-start 0 1'; recs_from 1 10; block 1; recs_from 11 20; block 2 stop; } >in.txt
    for m in "-k 3" "--per-class 2" "-k 3 --emit-every 50"; do
        # shellcheck disable=SC2086
        run -0 --separate-stderr stream-sample $m in.txt
        printf '%s\n' "$output" >out
        assert_equal "$(grep -vc '^#' out)" 0
        assert_equal "$(tail -n 1 out)" '#!ckpt-end 2'
        assert_equal "$stderr" ""
    done
}

@test "cuts: the input ends without a stop or final cut after a start line: exit 1, no sample" {
    { echo '#!ckpt-start 0 1'; recs_from 1 10; block 1; recs_from 11 14; } >in.txt
    run -1 --separate-stderr stream-sample -k 3 in.txt
    assert_equal "$(grep -vc '^#' <<<"$output")" 0
    [[ $stderr == *'in.txt: the input ended 4 records after cut 1, without the pipeline'"'"'s stop or final cut'* ]] ||
        fail "not the message expected: $stderr"
    # inside a block: the stages before went away mid-cut
    { echo '#!ckpt-start 0 1'; recs_from 1 3; echo '#!ckpt 1'; } >in.txt
    run -1 --separate-stderr stream-sample -p 1 in.txt
    [[ $stderr == *'in.txt: the input ended inside the block of cut 1'* ]] || fail "$stderr"
}

@test "cuts: a record inside a block, a part out of place, a malformed cut line: exit 1 naming FILE:LINE" {
    { echo '#!ckpt-start 0 1'; recs_from 1 2; echo '#!ckpt 1'; recs_from 3 3; } >in.txt
    run -1 --separate-stderr stream-sample -k 3 in.txt
    [[ $stderr == 'stream-sample: in.txt:5: a record inside the block of cut 1' ]] || fail "$stderr"
    # a part of this stage's index or after it comes from nowhere upstream
    { echo '#!ckpt-start 0 1'; echo '#!ckpt 1'; printf '#!part 1 1 stream-sample 0 %s\n' "$EMPTY_XXH3"; } >in.txt
    run -1 --separate-stderr stream-sample -k 3 in.txt
    [[ $stderr == 'stream-sample: in.txt:3: a part out of place (cut 1, stage 1)' ]] || fail "$stderr"
    { echo '#!ckpt-start 0 1'; printf '#!part 1 0 stream-ingest 0 %s\n' "$EMPTY_XXH3"; } >in.txt
    run -1 --separate-stderr stream-sample --every 2 in.txt
    [[ $stderr == 'stream-sample: in.txt:2: a part out of place (cut 1, stage 0)' ]] || fail "$stderr"
    { echo '#!ckpt-start 0 1'; echo '#!ckpt 1 later'; } >in.txt
    run -1 --separate-stderr stream-sample -p 0.5 in.txt
    [[ $stderr == 'stream-sample: in.txt:2: a malformed cut line'* ]] || fail "$stderr"
}

@test "cuts: resumed from a cut sgd-train committed, the output is the uninterrupted run's, final state included, in every mode" {
    mk_reg_spec spec.yaml
    { echo '#!ckpt-start 0 1'; recs_from 1 12; block 1; recs_from 13 40; block 2 final; } >full.txt
    { echo '#!ckpt-start 1 1'; recs_from 13 40; block 2 final; } >rest.txt
    local nm=0
    for m in "${SAMPLE_MODES[@]}"; do
        nm=$((nm + 1))
        # shellcheck disable=SC2086
        stream-sample $m --seed 5 full.txt >out.$nm
        sgd-train -m spec.yaml --ckpt-dir ck.$nm -q <out.$nm >/dev/null
        local cut=(ck.$nm/step-*-c1)
        [[ -d ${cut[0]} ]] || fail "$m: sgd-train committed no cut 1"
        # the seed is the state's now: another one changes nothing
        # shellcheck disable=SC2086
        run -0 --separate-stderr stream-sample $m --seed 77 --resume "${cut[0]}" rest.txt
        printf '%s\n' "$output" >resumed.$nm
        assert_equal "$(head -n 1 resumed.$nm)" '#!ckpt-start 1 2'
        after_line out.$nm '#!ckpt-end 1' >want
        tail -n +2 resumed.$nm >got
        cmp want got || fail "$m: the resumed run's output differs from the uninterrupted one's: $(diff want got | head)"
        assert_equal "$stderr" ""
    done
}

@test "cuts: --resume refuses a cut of another sample, another cut than the head's, input without a start line" {
    mk_reg_spec spec.yaml
    { echo '#!ckpt-start 0 1'; recs_from 1 12; block 1 stop; } >full.txt
    stream-sample -k 3 full.txt | sgd-train -m spec.yaml --ckpt-dir ck -q >/dev/null
    local cut=(ck/step-*-c1)
    { echo '#!ckpt-start 1 1'; recs_from 13 20; block 2 final; } >rest.txt
    run -1 --separate-stderr stream-sample -k 4 --resume "${cut[0]}" rest.txt
    [[ $stderr == *'stage 1 (stream-sample) of cut 1: the state of stream-sample -k 3, not of -k 4'* ]] || fail "$stderr"
    run -1 --separate-stderr stream-sample -k 3 --decay 0.5 --resume "${cut[0]}" rest.txt
    [[ $stderr == *'the state of stream-sample -k 3, not of -k 3 --decay 0.5'* ]] || fail "$stderr"
    run -1 --separate-stderr stream-sample -p 0.5 --resume "${cut[0]}" rest.txt
    [[ $stderr == *'the state of stream-sample -k 3, not of -p 0.5'* ]] || fail "$stderr"
    # the head resumed from another cut, or started afresh
    { echo '#!ckpt-start 2 1'; recs_from 13 20; block 3 final; } >other.txt
    run -1 --separate-stderr stream-sample -k 3 --resume "${cut[0]}" other.txt
    [[ $stderr == *'is cut 1, but the head of the pipeline resumed from cut'* ]] || fail "$stderr"
    { echo '#!ckpt-start 0 1'; recs_from 13 20; block 1 final; } >other.txt
    run -1 --separate-stderr stream-sample -k 3 --resume "${cut[0]}" other.txt
    [[ $stderr == *'is cut 1, but the head of the pipeline started afresh'* ]] || fail "$stderr"
    # no start line: the head is not stream-ingest, resumed
    run -1 --separate-stderr stream-sample -k 3 --resume "${cut[0]}" < <(recs 5)
    [[ $stderr == 'stream-sample: stdin:1: a record before the pipeline'"'"'s start line: with --resume the head must be stream-ingest, resumed from the same cut' ]] || fail "$stderr"
    run -1 --separate-stderr stream-sample -k 3 --resume "${cut[0]}" </dev/null
    [[ $stderr == *'the input ended without a pipeline'"'"'s start line'* ]] || fail "$stderr"
    # a pipeline of another shape: stage 1 is not stream-sample's
    { echo '#!ckpt-start 1 0'; recs_from 13 20; block 2 final; } >other.txt
    run -1 --separate-stderr stream-sample -k 3 --resume "${cut[0]}" other.txt
    [[ $stderr == *'stage 0 of cut 1 is stream-ingest, not stream-sample'* ]] || fail "$stderr"
    # not a checkpoint; stdin is the data
    run -1 --separate-stderr stream-sample -k 3 --resume nowhere rest.txt
    assert_equal "$output" ""
    run -2 --separate-stderr stream-sample -k 3 --resume - rest.txt
}

@test "cuts: --resume refuses damaged and hostile states: truncated, a byte flipped, counts of 2^40" {
    { echo '#!ckpt-start 0 1'; recs_from 1 12; block 1 stop; } >in.txt
    for m in "-k 3" "-k 3 --decay 0.1" "--per-class 2"; do
        # shellcheck disable=SC2086
        stream-sample $m in.txt >out
        part_of out 1 1 | sed '$d' >state.$(echo "$m" | tr -dc a-z0-9) # less its seal
    done
    { echo '#!ckpt-start 1 1'; recs_from 13 20; block 2 final; } >rest.txt
    # try NAME STATE MESSAGE MODE...: a cut of STATE (sealed) resumed with MODE
    # fails with MESSAGE, naming the stage
    try() {
        local name=$1 state=$2 msg=$3 cut
        shift 3
        rm -rf "ck.$name"
        cut=$(commit_state "$state" "ck.$name") || fail "$name: no cut committed"
        run -1 --separate-stderr stream-sample "$@" --resume "$cut" rest.txt
        [[ $stderr == *"$msg"* ]] || fail "$name: '$stderr' does not say '$msg'"
        [[ $stderr == *'stage 1 (stream-sample) of cut 1: '* ]] || fail "$name: '$stderr' names no stage"
    }
    # the seal first: truncated, or a byte flipped (the part's own hash is
    # right: the cut holds what the stage sent)
    commit_state state.k3 ck.ok >/dev/null || fail "no cut committed"
    part_of committed.txt 1 1 >sealed
    head -c -1 sealed >trunc # the seal's newline gone
    sed '3s/./X/5' sealed >flipped # a digit of the generator's state
    local dmg
    for dmg in trunc flipped; do
        rm -rf "ck.$dmg"
        { echo '#!ckpt-start 0 2'; printf '#!ckpt 1 stop\n#!part 1 0 stream-ingest 0 %s\n' "$EMPTY_XXH3"
          mkpart 1 1 stream-sample "$dmg"; echo '#!ckpt-end 1'; } >"$dmg.txt"
        sgd-train -m spec.yaml --ckpt-dir "ck.$dmg" -q <"$dmg.txt" >/dev/null
        local dcut=("ck.$dmg"/step-*-c1)
        [[ -d ${dcut[0]} ]] || fail "$dmg: no cut committed"
        run -1 --separate-stderr stream-sample -k 3 --resume "${dcut[0]}" rest.txt
        case $dmg in
        trunc) [[ $stderr == *"no 'end' line with its hash: truncated?"* ]] || fail "truncated: $stderr" ;;
        flipped) [[ $stderr == *'its hash does not match its contents: damaged'* ]] || fail "flipped: $stderr" ;;
        esac
    done
    # sealed but hostile: counts no sampler has, far beyond the state's bytes
    sed 's/^records 3$/records 1099511627776/' state.k3 >h1
    try records h1 'records held where its sampler holds' -k 3
    sed 's/^topk 3 3$/topk 3 1099511627776/' state.k3decay01 >h2
    try topk h2 '1099511627776 keys of the 3' -k 3 --decay 0.1
    sed 's/^classes 3$/classes 1099511627776/' state.perclass2 >h3
    try classes h3 '1099511627776 classes: more than there are class ids' --per-class 2
    awk '/^record / && !done { $3 = "4294967296"; done = 1 } { print }' state.k3 >h4
    try length h4 'a record of 4294967296 bytes, more than what follows' -k 3
    sed 's/^counts 12 /counts 13 /' state.k3 >h5
    try counts h5 "the sampler's count is not the records'" -k 3
    sed 's/^mini-nn stream-sample state 1$/mini-nn stream-sample state 2/' state.k3 >h6
    try version h6 'not a stream-sample state (version 1)' -k 3
    awk '/^record / && !done { $2 = 5; done = 1 } /^record / { $2 = 5 } { print }' state.k3 >h7
    try twice h7 'record 5 held twice' -k 3
    # and the state made by hand, unchanged, resumes
    cut=$(commit_state state.k3 ck.same)
    run -0 stream-sample -k 3 --resume "$cut" rest.txt
}

@test "cuts: SIGTERM does not stop a stage of a pipeline with cuts; the head's stop cut does" {
    mkfifo in
    stream-sample -k 2 <in >out 2>err &
    BG_PID=$!
    exec 7>in
    { echo '#!ckpt-start 0 1'; recs_from 1 5; } >&7
    wait_for_match out '^#!ckpt-start 0 2$' 300 || fail "no start line: $(cat err)"
    kill -TERM "$BG_PID"
    sleep 0.2
    kill -0 "$BG_PID" || fail "stream-sample ended on SIGTERM in a pipeline with cuts"
    block 1 stop >&7
    exec 7>&-
    bg_exit 0
    run -0 grep -c '^#!part 1 1 stream-sample ' out
    assert_equal "$(grep -vc '^#' out)" 0
}

@test "cuts: cut lines before any start line pass through as comments, noted once" {
    printf '0,1,2\n#!ckpt 1\n#!ckpt-end 1\n1,2,3\n' >in.txt
    run -0 --separate-stderr stream-sample -p 1 in.txt
    assert_output "$(printf '0,1,2\n#!ckpt 1\n#!ckpt-end 1\n1,2,3')"
    [[ $stderr == 'stream-sample: in.txt:2: a cut line before any pipeline'* ]] || fail "$stderr"
    assert_equal "${#stderr_lines[@]}" 1
}
