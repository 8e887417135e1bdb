#!/usr/bin/env bash
# Install, start a local six-storage-node cluster in ./data (port ${PORT:-5432}), open the SQL shell.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
port="${PORT:-5432}"
.venv/bin/aurora-db up --data ./data --port "$port" --detach
echo "Stop the cluster with: .venv/bin/aurora-db down --data ./data"
exec .venv/bin/aurora-db sql --port "$port"
