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

seconds() { # runs "$@", prints its wall time in seconds
    local start end
    start=$(date +%s%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s%N)
    echo "scale=3; ($end - $start) / 1000000000" | bc
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
