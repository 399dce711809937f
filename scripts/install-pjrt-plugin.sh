#!/usr/bin/env bash
# install-pjrt-plugin.sh: install a PJRT plugin, or the NVIDIA libraries it needs, from
# Python wheels, in the layout go-xla (gomlx's XLA backend) searches:
#
#   DEST/pjrt_c_api_tpu_plugin.so          libtpu.so from the `libtpu` wheel  -> --backend xla:tpu
#   DEST/nvidia/pjrt_c_api_cuda_plugin.so  xla_cuda_plugin.so from `jax-cuda13-pjrt` -> xla:cuda
#   DEST/nvidia/<pkg>/lib/...              the nvidia/ tree of NVIDIA library wheels (--nvidia-libs)
#
# DEST defaults to /usr/local/lib/go-xla. Every extracted file is checked against the
# sha256 the wheel's own RECORD lists for it, and a plugin must be an ELF shared object
# exporting GetPjrtApi. Nothing is downloaded here: fetch wheels first, for example
#   pip download --no-deps --only-binary=:all: --dest /wheels libtpu==VERSION
#   pip download --no-deps --only-binary=:all: --dest /wheels jax-cuda13-pjrt==VERSION
#
# Usage:
#   install-pjrt-plugin.sh [--dest DIR] [--name NAME] PLUGIN.whl
#   install-pjrt-plugin.sh --nvidia-libs [--dest DIR] NVIDIA.whl...
#
# --name NAME installs the plugin as pjrt_c_api_NAME_plugin.so (default: tpu for libtpu.so,
# cuda for xla_cuda_plugin.so). Zip extraction uses python3 when present, else unzip;
# PJRT_UNZIP=python3|unzip forces one. Exit status: 0 installed, 1 bad wheel or failed
# check (nothing is left at the destination), 2 usage.
set -euo pipefail

prog=${0##*/}
dest=/usr/local/lib/go-xla
name=
nvidia_libs=0

die() { echo "$prog: $*" >&2; exit 1; }
usage() {
  cat >&2 <<EOF
usage: $prog [--dest DIR] [--name NAME] PLUGIN.whl
       $prog --nvidia-libs [--dest DIR] NVIDIA.whl...
EOF
  exit 2
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --dest) [[ $# -ge 2 ]] || usage; dest=$2; shift 2 ;;
    --dest=*) dest=${1#*=}; shift ;;
    --name) [[ $# -ge 2 ]] || usage; name=$2; shift 2 ;;
    --name=*) name=${1#*=}; shift ;;
    --nvidia-libs) nvidia_libs=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "$prog: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage
if [[ $nvidia_libs -eq 0 && $# -ne 1 ]]; then
  echo "$prog: one plugin wheel at a time" >&2; usage
fi
if [[ -n $name && ! $name =~ ^[a-z0-9_]+$ ]]; then
  die "--name: '$name' must be lowercase letters, digits or _"
fi

extractor=${PJRT_UNZIP:-}
if [[ -z $extractor ]]; then
  if command -v python3 >/dev/null; then extractor=python3
  elif command -v unzip >/dev/null; then extractor=unzip
  else die "need python3 or unzip to read wheels"; fi
fi
case $extractor in
  python3|unzip) command -v "$extractor" >/dev/null || die "PJRT_UNZIP=$extractor is not installed" ;;
  *) die "PJRT_UNZIP must be python3 or unzip, not '$extractor'" ;;
esac

# list WHEEL: the member names, one a line.
list() {
  if [[ $extractor == python3 ]]; then
    python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$1"
  else
    unzip -Z1 "$1"
  fi
}

# extract WHEEL MEMBER OUT: write one member's bytes to OUT.
extract() {
  if [[ $extractor == python3 ]]; then
    python3 -c '
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$1" "$2" "$3"
  else
    unzip -p "$1" "$2" >"$3"
  fi
}

# extract_all WHEEL LIST DIR: extract the members named in LIST (one a line) under DIR,
# keeping their paths; python3 does it in one process.
extract_all() {
  if [[ $extractor == python3 ]]; then
    python3 -c '
import os, shutil, sys, zipfile
wheel, names, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, open(names) as f:
    for name in f.read().splitlines():
        path = os.path.join(out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(name) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)' "$1" "$2" "$3"
  else
    local m
    while IFS= read -r m; do
      mkdir -p "$3/$(dirname "$m")"
      unzip -p "$1" "$m" >"$3/$m"
    done <"$2"
  fi
}

# record_hash RECORD MEMBER: the urlsafe-base64 sha256 RECORD lists for MEMBER.
record_hash() {
  awk -F, -v m="$2" '$1 == m { sub(/^sha256=/, "", $2); print $2; found = 1 } END { exit !found }' "$1"
}

# file_hash FILE: sha256 in RECORD's encoding (urlsafe base64, no padding).
file_hash() {
  local hex
  hex=$(sha256sum "$1" | cut -c1-64)
  # shellcheck disable=SC2059,SC2001 # the hex digits become \x escapes on purpose
  printf "$(sed 's/../\\x&/g' <<<"$hex")" | base64 -w0 | tr '+/' '-_' | tr -d '='
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# verified WHEEL MEMBER OUT RECORD: extract MEMBER and check its RECORD hash.
verified() {
  local want got
  case $2 in /*|*../*|..) die "$1: refusing unsafe member name '$2'" ;; esac
  want=$(record_hash "$4" "$2") || die "$1: RECORD does not list $2"
  extract "$1" "$2" "$3"
  got=$(file_hash "$3")
  [[ $got == "$want" ]] || die "$1: $2 does not match the wheel's RECORD (sha256 $got, RECORD says $want)"
}

# record_of WHEEL MEMBERS_FILE: extract the wheel's RECORD, print its path.
record_of() {
  local rec
  rec=$(grep -E '^[^/]+\.dist-info/RECORD$' "$2" | head -n1) || true
  [[ -n $rec ]] || die "$1: not a wheel (no *.dist-info/RECORD)"
  extract "$1" "$rec" "$work/RECORD"
  echo "$work/RECORD"
}

if [[ $nvidia_libs -eq 1 ]]; then
  stage=$work/stage
  mkdir -p "$stage"
  for whl in "$@"; do
    [[ -f $whl ]] || die "$whl: no such file"
    list "$whl" >"$work/members"
    rec=$(record_of "$whl" "$work/members")
    grep -E '^nvidia/.*[^/]$' "$work/members" >"$work/nv" || die "$whl: no files under nvidia/"
    while IFS= read -r m; do
      case $m in *../*) die "$whl: refusing unsafe member name '$m'" ;; esac
    done <"$work/nv"
    rm -rf "$work/x"
    extract_all "$whl" "$work/nv" "$work/x"
    n=0
    while IFS= read -r m; do
      want=$(record_hash "$rec" "$m") || die "$whl: RECORD does not list $m"
      got=$(file_hash "$work/x/$m")
      [[ $got == "$want" ]] || die "$whl: $m does not match the wheel's RECORD (sha256 $got, RECORD says $want)"
      n=$((n + 1))
    done <"$work/nv"
    cp -a "$work/x/nvidia/." "$stage/"
    echo "$prog: $whl: $n files" >&2
  done
  # Shared objects must be executable by the loader; keep bin/ tools runnable.
  find "$stage" -type f \( -name '*.so*' -o -path '*/bin/*' \) -exec chmod 0755 {} +
  find "$stage" -type f ! -perm -u+x -exec chmod 0644 {} +
  # XLA looks for ptxas in <cuda data dir>/bin.
  if [[ -e $stage/cu13/bin/ptxas && ! -e $stage/bin/ptxas ]]; then
    mkdir -p "$stage/bin"
    ln -s ../cu13/bin/ptxas "$stage/bin/ptxas"
  fi
  mkdir -p "$dest/nvidia"
  cp -a "$stage/." "$dest/nvidia/"
  echo "$prog: NVIDIA libraries installed in $dest/nvidia" >&2
  exit 0
fi

whl=$1
[[ -f $whl ]] || die "$whl: no such file"
list "$whl" >"$work/members"
mapfile -t plugins < <(grep -E '(^|/)(libtpu\.so|xla_cuda_plugin\.so|pjrt_c_api_[a-z0-9_]+_plugin\.so)$' "$work/members" || true)
[[ ${#plugins[@]} -gt 0 ]] || die "$whl: no PJRT plugin (libtpu.so, xla_cuda_plugin.so or pjrt_c_api_*_plugin.so) in it"
[[ ${#plugins[@]} -eq 1 ]] || die "$whl: several plugins (${plugins[*]}); install from a wheel with one"
member=${plugins[0]}
base=${member##*/}
subdir=
case $base in
  libtpu.so) : "${name:=tpu}" ;;
  xla_cuda_plugin.so) : "${name:=cuda}"; subdir=nvidia ;; # go-xla finds NVIDIA libs in ../nvidia of the plugin
  *) if [[ -z $name ]]; then name=${base#pjrt_c_api_}; name=${name%_plugin.so}; fi ;;
esac
rec=$(record_of "$whl" "$work/members")
verified "$whl" "$member" "$work/plugin.so" "$rec"
[[ $(head -c4 "$work/plugin.so" | od -An -c | tr -d ' ') == '177ELF' ]] || die "$whl: $member is not an ELF shared object"
grep -aq GetPjrtApi "$work/plugin.so" || die "$whl: $member does not export GetPjrtApi: not a PJRT plugin"

outdir=$dest${subdir:+/$subdir}
out=$outdir/pjrt_c_api_${name}_plugin.so
mkdir -p "$outdir"
install -m 0755 "$work/plugin.so" "$out.tmp"
mv -f "$out.tmp" "$out"
echo "$prog: installed $member from $(basename "$whl") as $out (select it with --backend xla:$name)" >&2
