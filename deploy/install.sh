#!/usr/bin/env bash
# Install or upgrade orgsyncd as a systemd service on this host. Safe to run again: each step
# either converges to the same state or is skipped (an existing config is never overwritten).
#
#   sudo deploy/install.sh                 install from this source tree
#   sudo deploy/install.sh --from X.whl    install a built wheel (or any pip requirement) instead
#   deploy/install.sh --dry-run            print the steps, change nothing (no root needed)
#
# Environment: PYTHON (default python3, must be >= 3.11) builds the venv.
set -euo pipefail

readonly PREFIX=/opt/orgsyncd
readonly CONF_DIR=/etc/orgsyncd
readonly UNIT_DIR=/etc/systemd/system
readonly SYSUSERS_DIR=/etc/sysusers.d
readonly TMPFILES_DIR=/etc/tmpfiles.d
# /usr/local/bin: the admin's place for links, on root's PATH and sudo's secure_path.
readonly BIN_LINK=/usr/local/bin/orgsyncd
readonly UNIT=orgsyncd.service

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly SRC_DIR
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
PACKAGE="$SRC_DIR"

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# Print each step; run it unless --dry-run.
run() {
    printf '+ %s\n' "$*"
    if [[ $DRY_RUN -eq 0 ]]; then
        "$@"
    fi
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --from)
                [[ $# -ge 2 ]] || die "--from needs a wheel, directory or requirement"
                PACKAGE="$2"
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
}

check_prerequisites() {
    local missing=()
    local f
    for f in "$SRC_DIR/$UNIT" "$SRC_DIR/deploy/sysusers.d/orgsyncd.conf" \
        "$SRC_DIR/deploy/tmpfiles.d/orgsyncd.conf" "$SRC_DIR/config/orgsyncd.example.toml"; do
        [[ -f $f ]] || missing+=("$f")
    done
    if [[ $DRY_RUN -eq 1 ]]; then
        # A dry run reports what a real run would stop at, then shows the rest anyway.
        for f in "${missing[@]}"; do printf 'warning: missing %s\n' "$f" >&2; done
        return 0
    fi
    [[ ${#missing[@]} -eq 0 ]] || die "missing ${missing[*]}"
    [[ $EUID -eq 0 ]] || die "run as root (or use --dry-run)"
    command -v systemctl >/dev/null || die "systemctl not found: this script needs systemd"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$PYTHON is older than 3.11; set PYTHON=/path/to/python3.11"
}

# gpg decrypts tenants' PGP-encrypted rosters (python-gnupg drives it); a Debian package, not a wheel.
install_packages() {
    if command -v gpg >/dev/null; then
        return 0
    fi
    if command -v apt-get >/dev/null; then
        run apt-get install -y -q gnupg
    else
        printf 'warning: gpg not found and no apt-get: install GnuPG for PGP-encrypted rosters\n' >&2
    fi
}

install_venv() {
    if [[ ! -x $PREFIX/bin/python ]]; then
        run "$PYTHON" -m venv "$PREFIX"
    fi
    run "$PREFIX/bin/pip" install --quiet --upgrade pip
    # --upgrade re-installs the project and brings dependencies up to the versions it requires.
    run "$PREFIX/bin/pip" install --quiet --upgrade "$PACKAGE"
    run ln -sfn "$PREFIX/bin/orgsyncd" "$BIN_LINK"
}

install_system_files() {
    run install -D -m 0644 "$SRC_DIR/$UNIT" "$UNIT_DIR/$UNIT"
    run install -D -m 0644 "$SRC_DIR/deploy/sysusers.d/orgsyncd.conf" "$SYSUSERS_DIR/orgsyncd.conf"
    run install -D -m 0644 "$SRC_DIR/deploy/tmpfiles.d/orgsyncd.conf" "$TMPFILES_DIR/orgsyncd.conf"
    run systemd-sysusers "$SYSUSERS_DIR/orgsyncd.conf"
    run systemd-tmpfiles --create "$TMPFILES_DIR/orgsyncd.conf"
}

install_config() {
    if [[ -e $CONF_DIR/orgsyncd.toml ]]; then
        printf '= keeping existing %s\n' "$CONF_DIR/orgsyncd.toml"
        return 0
    fi
    run install -m 0640 -o root -g orgsyncd "$SRC_DIR/config/orgsyncd.example.toml" \
        "$CONF_DIR/orgsyncd.toml"
}

enable_unit() {
    run systemctl daemon-reload
    run systemctl enable "$UNIT"
}

next_steps() {
    cat <<EOF

Next:
  1. edit $CONF_DIR/orgsyncd.toml (tenants, listen address) and put each tenant's public key in
     $CONF_DIR/keys/<tenant>.pub (root:orgsyncd 0640)
  2. sudo -u orgsyncd $BIN_LINK --config $CONF_DIR/orgsyncd.toml tenants check
  3. systemctl start orgsyncd   (after an upgrade: systemctl restart orgsyncd)
  4. journalctl -u orgsyncd -f
EOF
}

main() {
    parse_args "$@"
    check_prerequisites
    install_packages
    install_venv
    install_system_files
    install_config
    enable_unit
    next_steps
}

main "$@"
