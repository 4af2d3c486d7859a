#!/usr/bin/env bash
# Install (or remove) campus-agent on Raspberry Pi OS Bookworm.  Run as root from a checkout:
#
#   sudo scripts/install.sh                  install or upgrade; never overwrites /etc/campus-agent/agent.yaml
#   sudo scripts/install.sh --uninstall      remove the program and the unit; keeps the config and the outbox
#   sudo scripts/install.sh --uninstall --purge   ... and delete /etc/campus-agent and the outbox too
#
# Options: --no-camera (skip python3-picamera2).  For tests: DESTDIR=<dir> installs under a
# scratch root; SKIP_APT=1, SKIP_PIP=1, SKIP_USER=1, SKIP_SYSTEMCTL=1 skip those steps.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
D="${DESTDIR:-}"
PREFIX="$D/opt/campus-agent"
ETC="$D/etc/campus-agent"
STATE="$D/var/lib/campus-agent"
UNIT="$D/etc/systemd/system/campus-agent.service"
BIN="$D/usr/local/bin/campus-agent"
SYSUSERS="$D/usr/lib/sysusers.d/campus-agent.conf"

mode=install purge=0 camera=1
for arg in "$@"; do
    case "$arg" in
        --uninstall) mode=uninstall ;;
        --purge) purge=1 ;;
        --no-camera) camera=0 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
run_systemctl() { [ "${SKIP_SYSTEMCTL:-0}" = 1 ] || systemctl "$@"; }

if [ -z "$D" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo $0 $*)" >&2
    exit 1
fi

if [ "$mode" = uninstall ]; then
    run_systemctl disable --now campus-agent.service 2>/dev/null || true
    rm -f "$UNIT" "$BIN"
    rm -rf "$PREFIX"
    run_systemctl daemon-reload || true
    if [ "$purge" = 1 ]; then
        rm -rf "$ETC" "$STATE" "$SYSUSERS"
        say "removed the agent, its configuration and its outbox"
    else
        say "removed the agent; kept $ETC and the outbox in $STATE (use --purge to delete them)"
    fi
    exit 0
fi

if [ "${SKIP_APT:-0}" != 1 ]; then
    pkgs=(python3-venv python3-lgpio)
    [ "$camera" = 1 ] && pkgs+=(python3-picamera2)
    say "installing ${pkgs[*]} from apt (picamera2 and lgpio come from the OS, not pip)"
    apt-get update
    apt-get install -y "${pkgs[@]}"
fi

install -D -m 0644 "$SRC/systemd/campus-agent.sysusers" "$SYSUSERS"
if [ "${SKIP_USER:-0}" != 1 ]; then
    getent group gpio >/dev/null || groupadd --system gpio
    getent group video >/dev/null || groupadd --system video
    systemd-sysusers "$SYSUSERS"
fi

say "creating the virtual environment in $PREFIX/venv (it sees the apt packages)"
mkdir -p "$PREFIX"
if [ "${SKIP_PIP:-0}" != 1 ]; then
    python3 -m venv --system-site-packages "$PREFIX/venv"
    # exact, tested versions of every dependency (constraints.txt), never whatever is newest today
    "$PREFIX/venv/bin/pip" install --quiet --upgrade --constraint "$SRC/constraints.txt" "$SRC"
else
    mkdir -p "$PREFIX/venv/bin"
fi
install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
cp -r "$SRC/docs" "$SRC/config" "$PREFIX/"
mkdir -p "$(dirname "$BIN")"
ln -sf /opt/campus-agent/venv/bin/campus-agent "$BIN"

install -D -m 0644 "$SRC/systemd/campus-agent.service" "$UNIT"

# The config holds no secret (those live in their own files, owner-only), so it is readable by
# all: technicians in campus-agent-ctl read control.socket from it for status/test-mode/simulate.
install -d -m 0755 "$ETC"
if [ -e "$ETC/agent.yaml" ]; then
    say "kept your $ETC/agent.yaml (the new example is $PREFIX/config/gate.yaml)"
else
    install -m 0644 "$SRC/config/gate.yaml" "$ETC/agent.yaml"
    say "wrote $ETC/agent.yaml from the gate example: edit it now"
fi

run_systemctl daemon-reload
say "installed.  Next:
  1. edit $ETC/agent.yaml; put ca.crt and client.crt beside it (mode 0644, owner root),
     and the secrets client.key and mqtt.pass owned by the service user, readable by it alone:
       install -m 0600 -o campus-agent -g campus-agent client.key $ETC/
  2. campus-agent check-config $ETC/agent.yaml
  3. systemctl enable --now campus-agent
  4. campus-agent status; sudo campus-agent doctor
  Technicians: usermod -aG campus-agent-ctl <user> to use status, test-mode and simulate without sudo
  (never add people to the campus-agent group; see docs/install.md, Threat model)."
