#!/usr/bin/env bash
# Install softpick into ./.venv if needed, then train the tiny offline demo model from the repository
# root. Extra flags go to `softpick demo`, e.g. `bash scripts/demo.sh --attn-type softmax --out outputs/demo-softmax`.
set -euo pipefail
. "$(dirname "$0")/env.sh"
softpick_venv quant  # the quantization libraries, so the demo's report compares hqq, torchao and quanto
exec softpick demo "$@"
