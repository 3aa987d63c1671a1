#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian/Ubuntu machine (as root):
#   bash scripts/test.sh [pytest args...]
# Installs the system packages the tests need (OpenSSH server, iproute2, ...), creates a virtualenv
# ($VENV, default .venv in the repository), installs the package with its test extra and runs pytest.
# Exits with pytest's exit code.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}

PACKAGES=(openssh-server openssh-client iproute2 supervisor postgresql postgresql-client sqlite3 curl git
          sudo util-linux procps mount passwd rsync shellcheck prometheus)
# The GitLab pipeline test runs gitlab-ci-local (npm; it needs git and rsync, and Node >= 18).
GITLAB_CI_LOCAL_VERSION=4.56.0
if ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(nodejs npm)
fi
# Debian's own python3 needs python3-venv for "python3 -m venv" (ensurepip); other Pythons have it.
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    PACKAGES+=(python3-venv)
fi

log() { printf 'test.sh: %s\n' "$*" >&2; }

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
    mapfile -t MISSING < <(missing_packages)
    if [ "${#MISSING[@]}" -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            log "missing packages: ${MISSING[*]} (run as root, or: sudo apt-get install -y ${MISSING[*]})"
            exit 2
        fi
        log "installing ${MISSING[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
    fi
else
    log "no apt-get: make sure these are installed: ${PACKAGES[*]}"
fi

if [ "$(gitlab-ci-local --version 2>/dev/null)" != "$GITLAB_CI_LOCAL_VERSION" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "missing gitlab-ci-local $GITLAB_CI_LOCAL_VERSION (run as root, or:" \
            "sudo npm install -g gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION)"
        exit 2
    fi
    log "installing gitlab-ci-local $GITLAB_CI_LOCAL_VERSION (npm)"
    npm install -g --silent --no-audit --no-fund "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]"

set +e
"$VENV/bin/python" -m pytest -q tests "$@"
status=$?
set -e
exit "$status"
