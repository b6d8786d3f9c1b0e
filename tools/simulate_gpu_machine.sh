#!/bin/bash
# Check the offline bundle without a GPU: a venv that holds only what the GPU machine has (gpu_bundle.MACHINE_HAS
# and what those need, linked from this project's venv), the bundle built for its Python, and tools/gpu_smoke.sh
# run there on the CPU with tiny models. A chapter that imports something neither side provides fails here.
#
#   bash tools/simulate_gpu_machine.sh [paper_smoke.py options, e.g. --chapters fig6_nlg_fairness]
#
# Works in /tmp/equinb-gpu-sim (a copy of the checkout's tracked and untracked files); exit status: gpu_smoke.sh's.
set -eu -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIM=/tmp/equinb-gpu-sim
PY=$ROOT/.venv/bin/python
rm -rf "$SIM" && mkdir -p "$SIM/site" "$SIM/repo"
"$PY" - "$SIM/site" <<'EOF'
import importlib.metadata as metadata, os, sys, sysconfig
sys.path.insert(0, "tools")
from gpu_bundle import MACHINE_HAS, closure
site = sysconfig.get_paths()["purelib"]
have, _ = closure(list(MACHINE_HAS), f"{sys.version_info.major}.{sys.version_info.minor}")
tops = {f.parts[0] for name in have for f in metadata.distribution(name).files or [] if f.parts[0] != ".."}
for top in sorted(tops):
    if os.path.exists(os.path.join(site, top)):
        os.symlink(os.path.join(site, top), os.path.join(sys.argv[1], top))
EOF
"$(readlink -f "$PY")" -m venv "$SIM/venv"
echo "$SIM/site" > "$("$SIM/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/machine.pth"
(cd "$ROOT" && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -xf - -C "$SIM/repo"
cd "$ROOT" && "$PY" tools/gpu_bundle.py --python "$("$PY" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')" \
    --out "$SIM/repo/.gpu" 2>&1 | { grep -v -E "Location .* is ignored" || true; }
cd "$SIM/repo" && PYTHON="$SIM/venv/bin/python" EQUINB_GPU_SITE="$SIM/installed" bash tools/gpu_smoke.sh \
    --device cpu --tiny "$@"
