#!/usr/bin/env bash
# Install, then run the whole test suite: unit tests, real-process integration and fault tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/pytest -q "$@"
