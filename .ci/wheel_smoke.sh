#!/usr/bin/env bash
# Does paka_hf work installed from its wheel, the way a user gets it? Build the wheel, install it NON-editable
# with the pinned requirements into a fresh virtual environment, and from a folder outside the repository
# (so the source tree cannot be imported) run the demo, a short training, the model card and a push to the
# loopback Hub stand-in. Fails on the first error. Usage: .ci/wheel_smoke.sh  (PYTHON=python3.11 to choose).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/paka_wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)
step() { echo "== wheel smoke [$(($(date +%s) - start)) s]: $*"; }

step "fresh virtual environment"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip

step "build the wheel"
# pip builds in an isolated environment with the backend pyproject.toml names (setuptools>=77, from pip's cache
# after the first run): the build a user's pip does.
"$VPY" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/paka_hf-*.whl)"
"$VPY" - "$WHEEL" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = {"paka_hf/hub/templates/paka_model_card.md", "paka_hf/evaluation/paka_mean_iou/paka_mean_iou.py"}
if need - names:
    sys.exit(f"the wheel lacks {sorted(need - names)}")
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    sys.exit("the wheel lacks the LICENSE file")
PY

step "install the pinned requirements and the wheel (not editable)"
"$VPY" -m pip install --quiet -r "$REPO/requirements-ci.txt"
"$VPY" -m pip install --quiet --no-deps "$WHEEL"

mkdir "$WORK/run"
cd "$WORK/run"  # outside the repository: only the installed wheel can be imported
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
"$VPY" - "$REPO" <<'PY'
import sys
from pathlib import Path

import paka_hf
from paka_hf.hub.card import TEMPLATE_PATH

repo, where = Path(sys.argv[1]).resolve(), Path(paka_hf.__file__).resolve()
if where.is_relative_to(repo) or "site-packages" not in where.parts:
    sys.exit(f"paka_hf imported from {where}, not from the installed wheel")
if not TEMPLATE_PATH.is_file():
    sys.exit(f"packaged template missing: {TEMPLATE_PATH}")
print(f"paka_hf {paka_hf.__version__} from {where.parent}")
PY

step "demo assets and a short training (paka-train, configs/demo.yaml)"
"$VPY" -m paka_hf.apps.demo demo --num_images 16
"$WORK/venv/bin/paka-train" --config "$REPO/configs/demo.yaml" --model_name_or_path demo/model \
    --dataset_name demo/images --output_dir out --max_steps 2 --per_device_train_batch_size 2 \
    --dataloader_num_workers 0 --save_steps 2 --logging_steps 1 --shuffle_buffer_size 8
test -f out/model.safetensors && test -f out/config.json

step "model card (paka-push --dry_run)"
"$WORK/venv/bin/paka-push" out --repo_id paka-org/wheel-smoke --dry_run > card.txt
grep -q "paka-org/wheel-smoke" card.txt

step "push to the loopback Hub stand-in (tests/hub_server.py)"
"$VPY" "$REPO/.ci/wheel_push.py" "$REPO/tests" out paka-org/wheel-smoke "$WORK/venv/bin/paka-push"

step "passed"
