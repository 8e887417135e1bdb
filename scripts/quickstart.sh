#!/usr/bin/env bash
# Install, start a local cluster in ./data (six storage nodes, a writer, two readers, the proxy;
# writer endpoint ${PORT:-5432}, reader endpoint one above), open the SQL shell on the writer endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
port="${PORT:-5432}"
.venv/bin/aurora-db up --data ./data --port "$port" --detach
echo "Stop the cluster with: .venv/bin/aurora-db down --data ./data"
exec .venv/bin/aurora-db sql --port "$port"
