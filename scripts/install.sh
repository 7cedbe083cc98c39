#!/usr/bin/env bash
# Install, upgrade or remove retrofit-agent on a Debian / Raspberry Pi OS
# gateway from a checkout, with pip and a network. On Debian and Raspberry Pi
# OS the Debian package (./scripts/build-deb) is the way: it installs with no
# network; this script stays for other systems and for trying a checkout.
# Run as root from a checkout (or unpacked release) of the project:
#
#   sudo ./scripts/install.sh                       install, or upgrade in place
#   sudo ./scripts/install.sh --uninstall           remove service and code;
#                                                   keep config and buffer
#   sudo ./scripts/install.sh --uninstall --purge   ... and delete them too
#
# Options:
#   --example FILE  config copied to /etc/retrofit-agent/config.yaml when no
#                   config exists yet (default: configs/example.yaml)
#   --python EXE    interpreter the venv is built from (default: /usr/bin/python3)
#   --no-start      enable the service but do not (re)start it
#   --destdir DIR   stage everything under DIR instead of / (also $DESTDIR):
#                   no users, no chown, no systemctl. For tests and images;
#                   a venv is not relocatable, so DIR/opt/... runs only as DIR.
#   --dry-run       print every step, change nothing
#   -h, --help      this text
#
# What it does (docs/operations.md has the long version):
#   /opt/retrofit-agent/venv-<stamp>   a fresh venv with the project pip-installed
#   /opt/retrofit-agent/venv           symlink to it, switched atomically only
#                                      after `retrofit-agent check` accepted the
#                                      config with the new code; the previous
#                                      venv is kept for a rollback
#   /usr/local/lib/systemd/system/retrofit-agent.service, .../sysusers.d/ and
#   .../tmpfiles.d/ entries; /usr/local/bin/retrofit-agent -> the venv's command
#   /etc/retrofit-agent/config.yaml    from the example, ONLY if absent: a
#                                      technician's config is never overwritten
#   /var/lib/retrofit-agent            the buffer: never touched, except --purge
# The service is enabled; it is (re)started when the config checks valid and
# is not the untouched example (readings tagged with the example's gateway
# and devices must not land in the buffer). Without systemd as PID 1 (a
# container) the systemctl steps are skipped with a message.
set -euo pipefail

NAME=retrofit-agent
SERVICE_USER=retrofit-agent
PREFIX=/opt/retrofit-agent
UNIT_DIR=/usr/local/lib/systemd/system      # locally installed units (systemd-analyze unit-paths)
SYSUSERS_DIR=/usr/local/lib/sysusers.d
TMPFILES_DIR=/usr/local/lib/tmpfiles.d
BIN_DIR=/usr/local/bin
CONF_DIR=/etc/retrofit-agent
STATE_DIR=/var/lib/retrofit-agent
KEEP_VENVS=2                                # the current one and one to roll back to

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXAMPLE=$ROOT/configs/example.yaml
# The distribution's interpreter (security updates, readable by the service
# user), not whatever python3 comes first in root's PATH (pyenv, conda).
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=python3
DESTDIR=${DESTDIR:-}
ACTION=install
PURGE=0
DRY_RUN=0
START=1

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
say() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --uninstall) ACTION=uninstall ;;
    --purge) PURGE=1 ;;
    --example) EXAMPLE=${2:?--example needs a file}; shift ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift ;;
    --destdir) DESTDIR=${2:?--destdir needs a directory}; shift ;;
    --no-start) START=0 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done
[ "$PURGE" -eq 0 ] || [ "$ACTION" = uninstall ] || die "--purge only goes with --uninstall"
if [ -n "$DESTDIR" ]; then
  DESTDIR=$(realpath -m "$DESTDIR")
fi
export PATH="$PATH:/usr/sbin:/sbin"

# Every change to the system goes through run, so --dry-run shows exactly
# what a real run would do.
run() {
  if [ "$DRY_RUN" -eq 1 ]; then
    printf '+ %s\n' "$*" >&2
  else
    "$@"
  fi
}

# systemd is PID 1 and we are installing into the live system.
systemd_live() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

systemctl_or_skip() {
  if systemd_live; then
    run systemctl "$@"
  elif [ -n "$DESTDIR" ]; then
    say "staging into $DESTDIR: skipping systemctl $*"
  else
    say "systemd is not running as PID 1 (a container?): skipping systemctl $*"
  fi
}

require_root() {
  if [ -z "$DESTDIR" ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root: sudo $0 $*"
  fi
}

# --- uninstall -------------------------------------------------------------
uninstall() {
  require_root --uninstall
  systemctl_or_skip disable --now "$NAME.service" || say "service was not loaded"
  run rm -f "$DESTDIR$UNIT_DIR/$NAME.service" \
            "$DESTDIR$SYSUSERS_DIR/$NAME.conf" \
            "$DESTDIR$TMPFILES_DIR/$NAME.conf"
  if [ -L "$DESTDIR$BIN_DIR/$NAME" ]; then
    run rm -f "$DESTDIR$BIN_DIR/$NAME"
  fi
  run rm -rf "$DESTDIR$PREFIX"
  systemctl_or_skip daemon-reload
  if [ "$PURGE" -eq 1 ]; then
    say "purging config $CONF_DIR and buffer $STATE_DIR (unsent readings are lost)"
    run rm -rf "$DESTDIR$CONF_DIR" "$DESTDIR$STATE_DIR"
  else
    say "kept config $CONF_DIR and buffer $STATE_DIR (remove with --uninstall --purge)"
  fi
  # The system user stays: a removed UID can be handed to another account
  # that would then own files left behind. `userdel $SERVICE_USER` if wanted.
  say "uninstalled; user $SERVICE_USER kept"
}

# --- install ---------------------------------------------------------------
check_python() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install it: apt-get install -y python3"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "retrofit-agent needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))"
  if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ -z "$DESTDIR" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      say "installing python3-venv with apt-get"
      run apt-get install -y -qq --no-install-recommends python3-venv
    else
      die "the venv module is missing: apt-get install -y python3-venv"
    fi
  fi
}

# Builds a new venv next to the current one and pip-installs a clean copy of
# the checkout into it (a copy: pip's in-tree build would leave build/ and
# *.egg-info in the checkout). Prints the new venv's path.
build_venv() {
  local venv stage
  venv=$DESTDIR$PREFIX/venv-$(date -u +%Y%m%dT%H%M%SZ)-$$
  if [ "$DRY_RUN" -eq 1 ]; then
    run "$PYTHON" -m venv "$venv"
    run "$venv/bin/python" -m pip install --quiet "<copy of $ROOT>"
    printf '%s\n' "$venv"
    return
  fi
  stage=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: $stage is local
  trap "rm -rf '$stage'" EXIT
  tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=.demo --exclude=build \
      --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
      --exclude=.hypothesis -cf - . | tar -C "$stage" -xf -
  mkdir -p "$DESTDIR$PREFIX"
  say "building $venv"
  "$PYTHON" -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$stage" >&2; then
    rm -rf "$venv"
    die "pip install failed; the installed version (if any) is untouched"
  fi
  rm -rf "$stage"
  trap - EXIT
  printf '%s\n' "$venv"
}

install_files() {
  run install -d -m 0755 "$DESTDIR$UNIT_DIR" "$DESTDIR$SYSUSERS_DIR" "$DESTDIR$TMPFILES_DIR" \
                         "$DESTDIR$BIN_DIR" "$DESTDIR$PREFIX/share"
  run install -m 0644 "$ROOT/systemd/$NAME.service" "$DESTDIR$UNIT_DIR/$NAME.service"
  run install -m 0644 "$ROOT/systemd/sysusers.d/$NAME.conf" "$DESTDIR$SYSUSERS_DIR/$NAME.conf"
  run install -m 0644 "$ROOT/systemd/tmpfiles.d/$NAME.conf" "$DESTDIR$TMPFILES_DIR/$NAME.conf"
  # The example and the operations guide of the installed version, for the
  # technician comparing a config with what the new version offers.
  if [ -f "$EXAMPLE" ]; then
    run install -m 0644 "$EXAMPLE" "$DESTDIR$PREFIX/share/example.yaml"
  fi
  if [ -f "$ROOT/docs/operations.md" ]; then
    run install -m 0644 "$ROOT/docs/operations.md" "$DESTDIR$PREFIX/share/operations.md"
  fi
}

# The config's JSON Schema beside the config, refreshed on every install so
# editors validate against the installed version ($schema=config.schema.json).
install_schema() {
  if [ -f "$ROOT/configs/config.schema.json" ]; then
    run install -d -m 0755 "$DESTDIR$CONF_DIR"
    run install -m 0644 "$ROOT/configs/config.schema.json" "$DESTDIR$CONF_DIR/config.schema.json"
  fi
}

create_user_and_dirs() {
  if [ -n "$DESTDIR" ]; then
    # No users in a staging tree: create the directories tmpfiles.d would,
    # without owners.
    run install -d -m 0755 "$DESTDIR$CONF_DIR" "$DESTDIR$CONF_DIR/profiles"
    run install -d -m 0750 "$DESTDIR$STATE_DIR"
    return
  fi
  if command -v systemd-sysusers >/dev/null; then
    run systemd-sysusers "$ROOT/systemd/sysusers.d/$NAME.conf"
  elif ! getent passwd "$SERVICE_USER" >/dev/null; then
    # Minimal images without systemd: the same user, by hand.
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
                --shell /usr/sbin/nologin --comment "retrofit-agent meter telemetry" "$SERVICE_USER"
    run usermod -a -G dialout "$SERVICE_USER"
  fi
  if command -v systemd-tmpfiles >/dev/null; then
    run systemd-tmpfiles --create "$ROOT/systemd/tmpfiles.d/$NAME.conf"
  else
    run install -d -m 0755 "$CONF_DIR" "$CONF_DIR/profiles"
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
  fi
}

# Sets CONFIG_FRESH=1 when the config was just copied from the example.
install_config() {
  local config=$DESTDIR$CONF_DIR/config.yaml
  CONFIG_FRESH=0
  if [ -e "$config" ]; then
    say "keeping the existing config $CONF_DIR/config.yaml"
    return
  fi
  if [ ! -f "$EXAMPLE" ]; then
    say "no config and no example ($EXAMPLE): write $CONF_DIR/config.yaml by hand"
    return
  fi
  say "installing the example config as $CONF_DIR/config.yaml: edit it for this building"
  # 0640 root:retrofit-agent: the service reads it, other local users do not
  # learn the site's broker and meter layout.
  if [ -n "$DESTDIR" ]; then
    run install -m 0640 "$EXAMPLE" "$config"
  else
    run install -m 0640 -o root -g "$SERVICE_USER" "$EXAMPLE" "$config"
  fi
  CONFIG_FRESH=1
}

# Points $PREFIX/venv at the new venv in one rename and deletes all but the
# newest $KEEP_VENVS venvs.
switch_venv() {
  local venv=$1 link=$DESTDIR$PREFIX/venv old
  run ln -sfn "$(basename "$venv")" "$link.new"
  run mv -T "$link.new" "$link"
  run ln -sfn "$PREFIX/venv/bin/$NAME" "$DESTDIR$BIN_DIR/$NAME"
  [ "$DRY_RUN" -eq 0 ] || return 0
  # Stamps sort by time; the newest are kept.
  while IFS= read -r old; do
    say "removing old $old"
    rm -rf "$old"
  done < <(find "$DESTDIR$PREFIX" -maxdepth 1 -name 'venv-*' -type d | sort | head -n "-$KEEP_VENVS")
}

install_all() {
  require_root
  # Two installs of one service: this script's unit in /usr/local would
  # override the package's, and an upgrade of either would miss the other.
  if [ -z "$DESTDIR" ] && dpkg-query -W -f='${Status}' "$NAME" 2>/dev/null | grep -q 'install ok installed'; then
    die "the Debian package $NAME is installed: upgrade with a newer package (docs/operations.md)"
  fi
  check_python
  local venv config_ok=0 previous=0 config=$DESTDIR$CONF_DIR/config.yaml
  [ -L "$DESTDIR$PREFIX/venv" ] && previous=1
  venv=$(build_venv)
  create_user_and_dirs
  install_config

  # Checked with the new code, and as the service user on a live system: a
  # venv or config the service cannot read fails here, not at 3 a.m.
  local check=("$venv/bin/$NAME" check --config "$config")
  if [ -z "$DESTDIR" ] && command -v runuser >/dev/null && getent passwd "$SERVICE_USER" >/dev/null; then
    check=(runuser -u "$SERVICE_USER" -- "${check[@]}")
  fi
  if [ ! -e "$config" ] && [ "$DRY_RUN" -eq 0 ]; then
    say "no config to check"
  elif [ "$DRY_RUN" -eq 1 ]; then
    run "${check[@]}"
    config_ok=1
  elif (cd / && "${check[@]}") >&2; then
    config_ok=1
  else
    say "the config does not pass 'retrofit-agent check' (problems above)"
  fi

  if [ "$config_ok" -eq 0 ] && [ "$previous" -eq 1 ]; then
    # The running service keeps its old code and config; switching now would
    # make its next restart fail.
    run rm -rf "$venv"
    die "upgrade not applied: fix $CONF_DIR/config.yaml, then run this again"
  fi
  install_files
  install_schema
  switch_venv "$venv"

  systemctl_or_skip daemon-reload
  systemctl_or_skip enable "$NAME.service"
  if [ "$config_ok" -eq 0 ]; then
    say "not starting: fix $CONF_DIR/config.yaml, then: systemctl start $NAME"
  elif [ "$CONFIG_FRESH" -eq 1 ] || { [ -f "$EXAMPLE" ] && cmp -s "$EXAMPLE" "$config"; }; then
    say "not starting: $CONF_DIR/config.yaml is still the example; edit it, check it with"
    say "  $NAME check --config $CONF_DIR/config.yaml && systemctl start $NAME"
  elif [ "$START" -eq 0 ]; then
    say "--no-start: start with: systemctl start $NAME"
  else
    # restart, not start: an upgrade must load the new code.
    systemctl_or_skip restart "$NAME.service"
  fi
  say "installed $(basename "$venv") (logs: journalctl -u $NAME -o cat)"
}

case $ACTION in
  install) install_all ;;
  uninstall) uninstall ;;
esac
