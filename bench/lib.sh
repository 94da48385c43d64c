# Shared by the bench scripts that time whole commands (source it after
# setting `root`): the ckpt binary, a scratch directory with N items, and
# wall-time helpers.

# Sets `ckpt`: $CKPT if given, else a fresh release build of this tree.
bench_ckpt() {
    if [[ -n ${CKPT:-} ]]; then
        ckpt=$(realpath "$CKPT")
    else
        cargo build --release -q -p ckpt-cli --manifest-path "$root/Cargo.toml"
        ckpt="$root/target/release/ckpt"
    fi
}

# Moves into a scratch directory (removed on exit) holding items.txt: 1..$1.
bench_workdir() {
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    seq 1 "$1" > items.txt
}

# Runs "$@" (its output to measured.out in the current directory), prints
# "WALL CPU": its wall time and its CPU time (user + system, its children's
# included), in seconds.
measure() {
    local TIMEFORMAT='%R %U %S' t
    t=$( { time "$@" > measured.out 2>&1; } 2>&1 )
    awk '{ printf "%.3f %.3f\n", $1, $2 + $3 }' <<< "$t"
}
seconds() { measure "$@" | cut -d' ' -f1; } # runs "$@", prints its wall time in seconds
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
