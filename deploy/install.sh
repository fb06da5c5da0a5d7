#!/bin/sh
# Install edge-agent on this device: a venv under $PREFIX, the reference models, the config
# (never overwritten), the systemd unit, a system user, and enable the service.
#
#   sudo deploy/install.sh                 # real install
#   DESTDIR=/tmp/root EDGE_AGENT_SKIP_VENV=1 deploy/install.sh   # staged install (packaging, tests)
#
# Variables: DESTDIR (staging root; when set, no user is created and nothing is enabled),
# PREFIX (/opt/edge-agent), SYSCONFDIR (/etc/edge-agent), UNITDIR (/etc/systemd/system),
# STATEDIR (/var/lib/edge-agent), PYTHON (python3), SERVICE_USER (edge-agent),
# EDGE_AGENT_SKIP_VENV=1 (no venv / pip), EDGE_AGENT_PIP_ARGS (extra pip arguments, e.g.
# "--no-index --find-links /media/wheels"), EDGE_AGENT_TRUSTED_KEY (a deploy public key to trust).
# Options: --no-venv (same as EDGE_AGENT_SKIP_VENV=1), --no-enable, --help.
set -eu

SRC_DIR=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/edge-agent}
SYSCONFDIR=${SYSCONFDIR:-/etc/edge-agent}
UNITDIR=${UNITDIR:-/etc/systemd/system}
STATEDIR=${STATEDIR:-/var/lib/edge-agent}
PYTHON=${PYTHON:-python3}
SERVICE_USER=${SERVICE_USER:-edge-agent}
SKIP_VENV=${EDGE_AGENT_SKIP_VENV:-0}
PIP_ARGS=${EDGE_AGENT_PIP_ARGS:-}
TRUSTED_KEY=${EDGE_AGENT_TRUSTED_KEY:-}
ENABLE=1

for arg in "$@"; do
    case "$arg" in
        --no-venv) SKIP_VENV=1 ;;
        --no-enable) ENABLE=0 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }

install_venv() {
    venv="$DESTDIR$PREFIX/venv"
    if [ "$SKIP_VENV" = 1 ]; then
        say "skipping the venv (EDGE_AGENT_SKIP_VENV=1)"
        return
    fi
    say "creating $venv"
    "$PYTHON" -m venv "$venv"
    # shellcheck disable=SC2086  # PIP_ARGS is a list of arguments
    "$venv/bin/pip" install --quiet $PIP_ARGS "$SRC_DIR"
}

install_files() {
    install -d -m 0755 "$DESTDIR$PREFIX/models" "$DESTDIR$PREFIX/docs"
    for f in "$SRC_DIR"/agent/data/*.tflite "$SRC_DIR"/agent/data/*.json \
             "$SRC_DIR/docs/DEPLOY.md"; do
        case "$f" in
            *.md) dest="$DESTDIR$PREFIX/docs/" ;;
            *) dest="$DESTDIR$PREFIX/models/" ;;
        esac
        if [ -f "$f" ]; then install -m 0644 "$f" "$dest"; fi
    done
    install -d -m 0755 "$DESTDIR$UNITDIR"
    sed -e "s|/opt/edge-agent|$PREFIX|g" -e "s|/etc/edge-agent/agent.yaml|$SYSCONFDIR/agent.yaml|" \
        -e "s|^User=edge-agent|User=$SERVICE_USER|" -e "s|^Group=edge-agent|Group=$SERVICE_USER|" \
        "$SRC_DIR/deploy/edge-agent.service" > "$DESTDIR$UNITDIR/edge-agent.service"
    chmod 0644 "$DESTDIR$UNITDIR/edge-agent.service"
    say "unit written to $DESTDIR$UNITDIR/edge-agent.service"
}

install_config() {
    conf="$DESTDIR$SYSCONFDIR/agent.yaml"
    install -d -m 0755 "$DESTDIR$SYSCONFDIR" "$DESTDIR$SYSCONFDIR/trusted-keys"
    keys="[]"
    if [ -n "$TRUSTED_KEY" ]; then
        install -m 0644 "$TRUSTED_KEY" "$DESTDIR$SYSCONFDIR/trusted-keys/"
        keys="[$SYSCONFDIR/trusted-keys/$(basename "$TRUSTED_KEY")]"
    fi
    if [ -e "$conf" ]; then
        say "keeping the existing $conf"
        return
    fi
    sed -e "s|^\(  manifest: \)[^ ]*|\1$PREFIX/models/digits_cnn.json|" \
        -e "s|^\(  trusted_keys: \)\[\]|\1$keys|" \
        -e "s|^state_dir: [^ ]*|state_dir: $STATEDIR|" \
        "$SRC_DIR/config/agent.example.yaml" > "$conf"
    chmod 0640 "$conf"
    say "config written to $conf (edit it, then: edge-agent check-config $SYSCONFDIR/agent.yaml)"
}

system_setup() {
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        say "creating system user $SERVICE_USER"
        useradd --system --home-dir "$STATEDIR" --no-create-home --shell /usr/sbin/nologin \
            --user-group "$SERVICE_USER"
    fi
    if getent group video >/dev/null 2>&1; then usermod -a -G video "$SERVICE_USER"; fi
    chgrp "$SERVICE_USER" "$SYSCONFDIR/agent.yaml"
    if [ "$ENABLE" = 1 ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
        systemctl enable edge-agent.service
        say "enabled; start with: systemctl start edge-agent"
    fi
}

install_venv
install_files
install_config
if [ -z "$DESTDIR" ]; then
    system_setup
else
    say "DESTDIR set: no user created, nothing enabled"
fi
say "done"
