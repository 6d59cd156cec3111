#!/usr/bin/env bash
# Set up a fresh machine for pgolf: a virtualenv in .venv with torch, the package and its dev tools,
# Debian's chromium for the page tests and Debian's PostgreSQL server for the storage tests (which start
# throw-away servers of their own: tests/postgres.py). Safe to run again: on a machine already set up it runs no
# installer and prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.pgolf-setup  # the hash of the two files that decide what gets installed, written after a full setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-64)

# Exit 0 (and print the versions) if this checkout's editable install and every requirement of
# pgolf[dev] are in .venv; -I keeps the current folder off sys.path, so the import check means the install.
check_venv() {
    [ -x .venv/bin/python ] && .venv/bin/python -I - "$PWD" <<'EOF'
import importlib.metadata as md, importlib.util, os, re, sys
root = os.path.realpath(sys.argv[1]) + os.sep
for package in ("pgolf", "space", "objectives", "search"):
    spec = importlib.util.find_spec(package)
    if spec is None or not os.path.realpath(spec.origin).startswith(root):
        sys.exit(1)
installed_extras = {"dev", "postgres"}  # what `pip install -e .[dev]` brings; other extras (brotli) are optional
try:
    for requirement in md.requires("pgolf"):
        extra = re.search(r'extra == "([^"]+)"', requirement)
        if extra is None or extra.group(1) in installed_extras:
            md.version(re.match(r"[A-Za-z0-9._-]+", requirement).group())
except md.PackageNotFoundError:
    sys.exit(1)
print(", ".join(f"{name} {md.version(name)}" for name in ("torch", "optuna", "ray", "optuna-dashboard")))
EOF
}

if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && versions=$(check_venv 2>/dev/null); then
    done_line="setup: already done ($versions); rm $STAMP to reinstall"
else
    echo "setup: installing torch, then pgolf and its dev tools into .venv (a few minutes on a fresh machine)"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    pip_install() {
        # -q leaves warnings and errors. Dropped: this machine's pip config names index folders that may not
        # exist ("Location ... is ignored"), and setuptools' notice that an editable install of a flat layout
        # lets same-named folders shadow the packages (the point of it here). pip's exit status is kept.
        PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS="ignore:Editable installation" \
            .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    }
    pip_install --upgrade pip
    # torch first, pinned: on the project's machines this version's CPU build lies on disk, and the
    # package's torch range is then already met (an unpinned torch would pull a multi-GB CUDA build).
    pip_install "torch==2.13.0"
    pip_install -e ".[dev]"
    versions=$(check_venv) || { echo "setup: .venv is still incomplete after installing" >&2; exit 1; }
    echo "$want" > "$STAMP"
    done_line="setup done: $versions"
fi
packages=()
if [ "${PGOLF_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then packages+=(chromium); fi
if [ "${PGOLF_SKIP_POSTGRES:-0}" != "1" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then packages+=(postgresql); fi
if [ ${#packages[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >/dev/null
fi
echo "$done_line"
