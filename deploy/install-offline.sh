#!/usr/bin/env bash
# Install or upgrade edge-agent from a wheelhouse made by build-wheelhouse.sh, with no
# network: pip sees only the wheelhouse (no index, no pip configuration of this machine).
#
# Layout (defaults):
#   /opt/edge-agent/venvs/<version>-<wheelhouse id>/   one venv per installed wheelhouse
#   /opt/edge-agent/current -> venvs/...               what the service runs
#   /opt/edge-agent/previous -> venvs/...              what --rollback goes back to
#   /opt/edge-agent/bin -> current/bin                 so /opt/edge-agent/bin/edge-agent works,
#                                                      and bin/install-offline.sh --rollback
#   /etc/edge-agent/agent.toml                         the config: written once, never replaced
#   /etc/edge-agent/agent.toml.example                 the template of the installed version
#   /etc/edge-agent/credentials/                       secrets for LoadCredential= (root only)
#   /etc/systemd/system/edge-agent.service             rewritten by every install
#   /etc/systemd/system/edge-agent.service.d/override.conf   the plant's settings: never replaced
# An upgrade is the same command with a newer wheelhouse: a new venv, the config checked by
# the new version before anything switches, the symlink switched, the service restarted.
set -euo pipefail
umask 022 # the service runs as a dynamic user: it must be able to read the venv
unset PYTHONPATH PYTHONHOME # this shell's Python settings must not leak into pip or check

usage() {
  cat <<'EOF'
Usage: install-offline.sh [options] [WHEELHOUSE]
       install-offline.sh --rollback [options]

Install or upgrade edge-agent from WHEELHOUSE (default: the folder this script is in),
without network access. Run as root; re-running with the same wheelhouse changes nothing.

  --prefix DIR     where the venvs go (default: /opt/edge-agent)
  --etc DIR        config folder (default: /etc/edge-agent)
  --unit-dir DIR   systemd unit folder (default: /etc/systemd/system)
  --root DIR       test install: the three folders above under DIR, systemctl not called
  --python PYTHON  interpreter for the venv (default: python3); the wheelhouse's version
  --no-systemctl   install files only: no daemon-reload, no restart
  --rollback       switch back to the version installed before the current one (also
                   as /opt/edge-agent/bin/install-offline.sh --rollback)
  -h, --help       this text

After a first install: edit the config, check it, then start the service:
  /opt/edge-agent/bin/edge-agent check -c /etc/edge-agent/agent.toml
  systemctl enable --now edge-agent
EOF
}

say() { echo "install-offline: $*"; }
die() {
  echo "install-offline: $*" >&2
  exit 1
}

wheelhouse=""
prefix=""
etc=""
unit_dir=""
root=""
python="python3"
systemctl_calls=yes
action=install

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a folder}"; shift 2 ;;
    --etc) etc="${2:?--etc needs a folder}"; shift 2 ;;
    --unit-dir) unit_dir="${2:?--unit-dir needs a folder}"; shift 2 ;;
    --root) root="${2:?--root needs a folder}"; shift 2 ;;
    --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
    --no-systemctl) systemctl_calls=no; shift ;;
    --rollback) action=rollback; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option: $1" ;;
    *) [ -z "$wheelhouse" ] || die "one wheelhouse only"; wheelhouse="$1"; shift ;;
  esac
done

if [ -n "$root" ]; then
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
  systemctl_calls=no
fi
prefix="${prefix:-$root/opt/edge-agent}"
etc="${etc:-$root/etc/edge-agent}"
unit_dir="${unit_dir:-$root/etc/systemd/system}"
for dir in "$prefix" "$etc" "$unit_dir"; do
  # the paths go into the unit file, where spaces and quotes would need escaping
  [[ "$dir" =~ ^/[A-Za-z0-9._/+@-]*$ ]] || die "expected an absolute path of [A-Za-z0-9._/+@-], got '$dir'"
done
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (or with --root DIR for a test install)"
fi

mkdir -p "$prefix/venvs"
exec 9>"$prefix/.install.lock"
flock -n 9 || die "another install-offline.sh is running on $prefix"

# Point the symlink $1 at $2 in one rename, so the service never sees it missing.
switch_link() {
  ln -sfn "$2" "$1.new"
  mv -T "$1.new" "$1"
}

# The config as a given venv's edge-agent sees it; prints its one-line problems.
config_ok() {
  "$1/bin/edge-agent" check -c "$etc/agent.toml" >/dev/null
}

restart_if_running() {
  [ "$systemctl_calls" = yes ] || return 0
  systemctl daemon-reload
  if systemctl is-active --quiet edge-agent.service; then
    systemctl restart edge-agent.service
    say "edge-agent.service restarted"
  fi
}

rollback() {
  local current previous
  current="$(readlink "$prefix/current" || true)"
  previous="$(readlink "$prefix/previous" || true)"
  if [ -z "$previous" ] || [ ! -d "$prefix/$previous" ]; then
    die "nothing to roll back to in $prefix"
  fi
  config_ok "$prefix/$previous" \
    || die "$previous rejects $etc/agent.toml (above): restore the config it ran with, then retry"
  switch_link "$prefix/current" "$previous"
  switch_link "$prefix/previous" "$current"
  say "current: $previous (was $current; --rollback again switches back)"
  restart_if_running
}

if [ "$action" = rollback ]; then
  rollback
  exit 0
fi

# --- the wheelhouse: complete, unaltered, and for this Python ---
wheelhouse="${wheelhouse:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
if [ ! -f "$wheelhouse/BUILD-INFO" ] || [ ! -f "$wheelhouse/SHA256SUMS" ]; then
  die "$wheelhouse is not a wheelhouse: make one with deploy/build-wheelhouse.sh"
fi
(cd "$wheelhouse" && sha256sum --check --quiet --strict SHA256SUMS) \
  || die "$wheelhouse does not match its SHA256SUMS: copy it again"
info() { sed -n "s/^$1=//p" "$wheelhouse/BUILD-INFO"; }
version="$(info version)"
extras="$(info extras)"
wanted_python="$(info python)"
command -v "$python" >/dev/null || die "$python not found (use --python)"
have_python="$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
[ "$have_python" = "$wanted_python" ] \
  || die "the wheelhouse is for $wanted_python, $python is $have_python: build it with that Python"
case "$(readlink -f "$(command -v "$python")")" in
  /home/* | /root/*) say "warning: $python lives under /home or /root, which the unit hides (ProtectHome=yes)" ;;
esac
getent group dialout >/dev/null || say "warning: no group dialout: remove SupplementaryGroups=dialout from the unit"

# --- the venv of this wheelhouse ---
wheels_id="$(grep ' wheels/' "$wheelhouse/SHA256SUMS" | sha256sum | cut -c1-12)"
name="venvs/$version-$wheels_id"
venv="$prefix/$name"
if [ -f "$venv/.installed" ]; then
  say "$name is installed already"
else
  rm -rf "$venv" # an install that was interrupted
  "$python" -m venv "$venv" || die "$python -m venv failed (Debian: apt-get install python3-venv)"
  # --isolated and no config file: pip uses the wheelhouse and nothing else
  PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -I -m pip --isolated install --quiet --no-index \
    --no-cache-dir --find-links "$wheelhouse/wheels" "edge-agent${extras:+[$extras]}==$version"
  "$venv/bin/edge-agent" --version >/dev/null
  install -m 0755 "$wheelhouse/install-offline.sh" "$venv/bin/install-offline.sh" # for --rollback
  touch "$venv/.installed"
  say "installed $name"
fi

# --- config: the plant's file is never replaced ---
mkdir -p "$etc"
install -d -m 0700 "$etc/credentials"
install -m 0644 "$wheelhouse/agent.toml" "$etc/agent.toml.example"
first_install=no
if [ ! -e "$etc/agent.toml" ]; then
  install -m 0644 "$wheelhouse/agent.toml" "$etc/agent.toml"
  first_install=yes
  say "wrote $etc/agent.toml from the template: edit it before starting the service"
fi
# the template is known to pass; a config the plant has edited must pass the new version
if [ "$first_install" = no ] && ! config_ok "$venv"; then
  die "$name rejects $etc/agent.toml (above); nothing was switched"
fi

# --- the unit, rendered for these folders; the plant's drop-in stays ---
mkdir -p "$unit_dir/edge-agent.service.d"
unit="$unit_dir/edge-agent.service"
sed -e "s|/opt/edge-agent|$prefix|g" -e "s|/etc/edge-agent|$etc|g" \
  "$wheelhouse/edge-agent.service" >"$unit.new"
unit_changed=no
if ! cmp -s "$unit.new" "$unit"; then
  unit_changed=yes
  chmod 0644 "$unit.new"
  mv "$unit.new" "$unit"
  say "wrote $unit"
else
  rm "$unit.new"
fi
override="$unit_dir/edge-agent.service.d/override.conf"
if [ ! -e "$override" ]; then
  cat >"$override" <<'EOF'
# This plant's settings for edge-agent.service (install-offline.sh never replaces this
# file; `systemctl edit edge-agent` edits it). See the comments in edge-agent.service.
[Service]
# the devices, brokers, stores and DNS servers the agent talks to (the rest is denied):
#IPAddressAllow=192.168.10.0/24
# local folders an uplink or resample path writes outside /var/lib/edge-agent, writable
# by a group the service joins (see edge-agent.service):
#ReadWritePaths=/srv/edge-data
#SupplementaryGroups=edge-data
# secrets: a file in /etc/edge-agent/credentials, read by the config as
# password_file = "/run/credentials/edge-agent.service/mqtt-password"
#LoadCredential=mqtt-password:/etc/edge-agent/credentials/mqtt-password
EOF
  sed -i "s|/etc/edge-agent|$etc|g" "$override"
  say "wrote $override"
fi

# --- switch, keep one version to roll back to, drop older ones ---
current="$(readlink "$prefix/current" || true)"
if [ "$current" != "$name" ]; then
  [ -z "$current" ] || switch_link "$prefix/previous" "$current"
  switch_link "$prefix/current" "$name"
  say "current: $name${current:+ (previous: $current)}"
fi
[ "$(readlink "$prefix/bin" || true)" = current/bin ] || switch_link "$prefix/bin" current/bin
previous="$(readlink "$prefix/previous" || true)"
for old in "$prefix"/venvs/*; do
  case "venvs/$(basename "$old")" in
    "$name" | "$previous") ;;
    *) rm -rf "$old" && say "removed $old" ;;
  esac
done

if [ "$current" != "$name" ] || [ "$unit_changed" = yes ]; then
  restart_if_running
fi
if [ "$first_install" = yes ]; then
  say "next: edit $etc/agent.toml, then"
  say "  $prefix/bin/edge-agent check -c $etc/agent.toml"
  [ "$systemctl_calls" = no ] || say "  systemctl enable --now edge-agent"
fi
