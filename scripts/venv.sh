# Sourced by the quick-start scripts: create or reuse .venv and install the project into it.
# Usage: . scripts/venv.sh EXTRAS   (EXTRAS like "" or "[dev,export]")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EDGE_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.installed-$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)-${1:-base}"
if [ ! -f "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$root${1:-}"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
