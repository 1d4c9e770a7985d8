#!/usr/bin/env bash
# `make gpu-wheels`: fill DIR (default .whl) with one wheel per package of benchmarks/gpu_wheels.txt, at its pin in
# constraints.txt, for the device's Python 3.12 on manylinux x86-64. Wheels already there are kept (a re-run
# downloads nothing); another version of a listed package, or a package no longer listed, is removed, so DIR holds
# one version of each. A package that cannot be had stops it: one line naming it, pip's output in DIR/.log.
#   bash benchmarks/gpu_wheels.sh [DIR]      fill DIR
#   bash benchmarks/gpu_wheels.sh --list     print the NAME==VERSION lines it would fetch (no network)
# PYTHON3 (default python3) runs pip here; any version does, the wheels are chosen for the device.
set -uo pipefail
cd "$(dirname "$0")/.."
LIST=benchmarks/gpu_wheels.txt CONSTRAINTS=constraints.txt LIMIT_MIB=64
PYTHON3=${PYTHON3:-python3}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
MORE_PLATFORMS=(--platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64
                --platform manylinux_2_35_x86_64)

die() { echo "gpu-wheels: $*" >&2; exit 1; }
canon() { tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/-/g'; }  # PEP 503 name

pin() {  # constraints.txt's version of NAME, if pinned
    awk -F'==' -v want="$(canon <<<"$1")" '/^[A-Za-z0-9._-]+==/ {
        name = tolower($1); gsub(/[-_.]+/, "-", name); if (name == want) { print $2; exit } }' "$CONSTRAINTS"
}

# The list: NAME==VERSION, how (wheel or sdist), build requirements.
specs=()
while read -r name how build; do
    [ -n "$name" ] || continue
    if [[ $name == *==* ]]; then version=${name#*==} name=${name%%==*}; else version=$(pin "$name"); fi
    [ -n "$version" ] || die "$name: no pin in $CONSTRAINTS (pin it there, or write NAME==VERSION with the reason in $LIST)"
    specs+=("$name==$version ${how:-wheel} $build")
done < <(sed -e 's/#.*//' "$LIST")

if [ "${1:-}" = --list ]; then
    printf '%s\n' "${specs[@]%% *}"
    exit 0
fi
DIR=${1:-.whl}
mkdir -p "$DIR"
LOG=$DIR/.log
: >"$LOG"
WORK=$(mktemp -d) || die "no scratch folder"
trap 'rm -rf "$WORK"' EXIT

# A scratch venv that builds NAME's sdist: constraints.txt's setuptools and the build requirements, no torch.
build_venv() {  # NAME BUILD...
    local venv=$WORK/venv-$1; shift
    [ -x "$venv/bin/python" ] || "$PYTHON3" -m venv "$venv" >>"$LOG" 2>&1 || return 1
    "$venv/bin/python" -m pip install -q "setuptools==$(pin setuptools)" "$@" >>"$LOG" 2>&1 || return 1
    echo "$venv/bin/python"
}

fetch() {  # NAME VERSION HOW BUILD...: one wheel into DIR
    local name=$1 version=$2 how=$3; shift 3
    if [ "$how" = sdist ]; then
        local python src
        python=$(build_venv "$name" "$@") || return 1
        src=$WORK/$name && mkdir -p "$src" || return 1
        # DS_BUILD_OPS=0: DeepSpeed as pure Python (its ops JIT-built on the device, for the accelerator it finds there)
        DS_BUILD_OPS=0 DS_ACCELERATOR=cuda "$python" -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$src" "$name==$version" >>"$LOG" 2>&1 &&
        DS_BUILD_OPS=0 DS_ACCELERATOR=cuda "$python" -m pip wheel --no-deps --no-build-isolation -w "$DIR" "$src"/* >>"$LOG" 2>&1
        return
    fi
    local common=(download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$DIR" "$name==$version")
    "$PYTHON3" -m pip "${common[@]}" "${PLATFORMS[@]}" >>"$LOG" 2>&1 ||
        "$PYTHON3" -m pip "${common[@]}" "${PLATFORMS[@]}" "${MORE_PLATFORMS[@]}" >>"$LOG" 2>&1
}

keep=()
for spec in "${specs[@]}"; do
    read -r nv how build <<<"$spec"
    name=${nv%%==*} version=${nv#*==}
    stem=$(canon <<<"$name" | tr - _)  # a wheel file's name part (case aside)
    keep+=("$stem")
    find "$DIR" -maxdepth 1 -iname "$stem-*.whl" ! -iname "$stem-$version-*.whl" -exec rm -v {} + | sed 's/^/gpu-wheels: other version, /'
    if [ -z "$(find "$DIR" -maxdepth 1 -iname "$stem-$version-*.whl")" ]; then
        echo "gpu-wheels: $name==$version ($how)"
        # shellcheck disable=SC2086
        fetch "$name" "$version" "$how" $build || die "$name==$version: no $([ "$how" = sdist ] && echo "wheel built from its sdist" || echo "wheel for Python 3.12 manylinux x86-64") (pip's output: $LOG)"
        [ -n "$(find "$DIR" -maxdepth 1 -iname "$stem-$version-*.whl")" ] || die "$name==$version: pip made no $stem-$version-*.whl (pip's output: $LOG)"
    fi
done
for wheel in "$DIR"/*.whl; do  # nothing but the list
    [ -e "$wheel" ] || continue
    stem=$(basename "$wheel" | cut -d- -f1 | canon | tr - _)
    [[ " ${keep[*]} " == *" $stem "* ]] || { rm "$wheel"; echo "gpu-wheels: not listed, removed $wheel"; }
done

count=$(find "$DIR" -maxdepth 1 -type f -name '*.whl' | wc -l)
bytes=$(find "$DIR" -maxdepth 1 -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
mib=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')
echo "gpu-wheels: $count wheels in $DIR, $mib MiB"
[ "$bytes" -le $((LIMIT_MIB * 1048576)) ] || die "$DIR holds $mib MiB, over the $LIMIT_MIB MiB a device call can carry"
