#!/usr/bin/env bash
# Build, on a machine with internet access, the folder that installs edge-agent on a plant
# PC with no network: wheels of the project and of every dependency, the install script,
# the config template, the systemd unit, BUILD-INFO and SHA256SUMS. Copy the folder over
# (USB stick, file transfer) and run install-offline.sh from it.
#
# Wheels are platform specific: build with the same OS release, CPU architecture and
# Python minor version as the plant PC (a VM or container of its image will do);
# install-offline.sh refuses a wheelhouse built for another Python.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/build-wheelhouse.sh [--out DIR] [--extras LIST] [--python PYTHON] [--source DIR]

Build an offline wheelhouse of edge-agent (needs internet access or a package mirror
that pip is configured for).

  --out DIR        folder to create (default: ./edge-agent-wheelhouse-<version>);
                   an earlier wheelhouse there is replaced, any other folder is refused
  --extras LIST    comma-separated extras to include (default: serial, for Modbus RTU;
                   e.g. serial,postgres); "" for none
  --python PYTHON  the interpreter the wheels are for (default: python3); its minor
                   version must be the plant PC's
  --source DIR     the edge-agent source tree (default: this script's repository)
  -h, --help       this text

Re-running with the same arguments rebuilds the same folder.
EOF
}

die() {
  echo "build-wheelhouse: $*" >&2
  exit 1
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(dirname "$here")"
out=""
extras="serial"
python="python3"
unset PYTHONPATH PYTHONHOME # this shell's Python settings must not leak into the build

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --extras) extras="${2?--extras needs a list}"; shift 2 ;;
    --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
    --source) source_dir="${2:?--source needs a folder}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ -f "$source_dir/pyproject.toml" ] || die "no pyproject.toml in $source_dir (use --source)"
case "$extras" in
  *[!a-z0-9,_-]*) die "--extras: expected a comma-separated list such as serial,postgres" ;;
esac
command -v "$python" >/dev/null || die "$python not found (use --python)"

version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$source_dir/agent/__init__.py")"
[ -n "$version" ] || die "cannot read __version__ from $source_dir/agent/__init__.py"
out="${out:-./edge-agent-wheelhouse-$version}"
if [ -e "$out" ] && [ ! -f "$out/BUILD-INFO" ]; then
  die "$out exists and is not a wheelhouse: choose another --out"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# build from a copy: setuptools writes build/ and *.egg-info beside the sources
mkdir "$work/src"
if git -C "$source_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # the files of a clean checkout, with uncommitted edits, without ignored artefacts
  (cd "$source_dir" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' file; do [ ! -e "$file" ] || printf '%s\0' "$file"; done \
    | xargs -0 cp --parents -t "$work/src")
else
  cp -r "$source_dir/." "$work/src"
fi
"$python" -m venv "$work/venv" || die "$python -m venv failed (Debian: apt-get install python3-venv)"
requirement="$work/src"
[ -z "$extras" ] || requirement="$work/src[$extras]"

echo "build-wheelhouse: wheels of edge-agent $version${extras:+ [$extras]} for $python"
mkdir -p "$work/out/wheels"
"$work/venv/bin/pip" wheel --quiet --disable-pip-version-check \
  --wheel-dir "$work/out/wheels" "$requirement"
# the wheels must install from each other alone, as they will on the plant PC
PIP_CONFIG_FILE=/dev/null "$work/venv/bin/pip" --isolated install --quiet --no-index \
  --find-links "$work/out/wheels" --dry-run "edge-agent${extras:+[$extras]}==$version" \
  || die "the wheels do not install offline (see above)"

cp "$here/install-offline.sh" "$work/out/"
cp "$here/agent.toml" "$work/out/agent.toml"
cp "$here/systemd/edge-agent.service" "$work/out/edge-agent.service"
python_tag="$("$work/venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
platform="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_platform())')"
commit="$(git -C "$source_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)"
cat >"$work/out/BUILD-INFO" <<EOF
version=$version
extras=$extras
python=$python_tag
platform=$platform
commit=$commit
EOF
(cd "$work/out" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) \
  >"$work/SHA256SUMS"
mv "$work/SHA256SUMS" "$work/out/SHA256SUMS"

rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$work/out" "$out"
echo "build-wheelhouse: $out ($(find "$out/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1))"
echo "build-wheelhouse: on the plant PC, as root: $(basename "$out")/install-offline.sh"
