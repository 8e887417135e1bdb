#!/usr/bin/env bash
# End-to-end test of docker-compose.yml: the cluster in real containers survives `docker kill`.
# 1. A Docker engine: the running one, else `dockerd --iptables=false` started here (installed with
#    apt-get first if missing, as root) and stopped again at the end.
# 2. A base image: python:3.11-slim if it can be pulled, else one made with debootstrap and
#    `docker import` (DESIGN.md section 12), kept as aurora-db-base:bookworm for the next run.
# 3. The image, from wheels downloaded on the host into docker/wheelhouse (pip cannot reach a package
#    index inside `docker build` here).
# 4. scripts/compose_e2e.py: up, a write workload, the kills and the checks, `down -v`.
# Exit status: 0 passed, 1 failed, 77 skipped (no Docker engine can be started on this machine).
# Settings: E2E_WRITER_PORT (25432), E2E_READER_PORT (25433), E2E_NET (10.91.1: the cluster's /24),
# E2E_PROJECT (aurora-e2e), AURORA_BASE_IMAGE (skips step 2), AURORA_IMAGE (aurora-db:latest),
# DEBIAN_MIRROR. A cluster of `docker compose up` in this directory (project, ports and network of
# its own) may run meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

EXIT_SKIPPED=77
DOCKERD_START_TIMEOUT_S=60
PULL_TIMEOUT_S=120
DEFAULT_BASE_IMAGE=python:3.11-slim
LOCAL_BASE_IMAGE=aurora-db-base:bookworm
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=${AURORA_IMAGE:-aurora-db:latest}
PROJECT=${E2E_PROJECT:-aurora-e2e}
WRITER_PORT=${E2E_WRITER_PORT:-25432}
READER_PORT=${E2E_READER_PORT:-25433}
NET=${E2E_NET:-10.91.1}
WHEELHOUSE=docker/wheelhouse
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/aurora-db-e2e.XXXXXX")
STARTED=$(date +%s.%N)
export E2E_STARTED=$STARTED

dockerd_pid=""
cluster_started=""
compose=()

since() { awk -v now="$(date +%s.%N)" -v then="$1" 'BEGIN { printf "%.1f", now - then }'; }
log() { printf '[%7ss] %s\n' "$(since "$STARTED")" "$*"; }

skip() {
  echo
  echo "######################################################################################"
  echo "##  SKIPPED: the Docker end-to-end test did not run."
  echo "##  $*"
  echo "######################################################################################"
  exit "$EXIT_SKIPPED"
}

fail() { log "FAILED: $*"; exit 1; }

cleanup() {
  local status=$?
  if [ -n "$cluster_started" ]; then  # compose_e2e.py runs down -v itself, unless it was killed
    "${compose[@]}" -p "$PROJECT" down -v >/dev/null 2>&1 || true
  fi
  if [ -n "$dockerd_pid" ]; then
    log "stopping the dockerd started here (pid $dockerd_pid)"
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  rm -rf "$WORK_DIR"
  exit "$status"
}
trap cleanup EXIT

as_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  as_root && command -v apt-get >/dev/null || return 1
  log "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_engine() {
  if docker info >/dev/null 2>&1; then
    log "Docker engine: running ($(docker version --format '{{.Server.Version}}'))"
    return
  fi
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    apt_install docker.io docker-compose debootstrap || skip "no Docker engine here, and apt-get could not install docker.io"
  fi
  as_root || skip "docker info fails (no engine runs, or this user may not use it), and starting dockerd needs root"
  local started log_file="$WORK_DIR/dockerd.log"
  started=$(date +%s.%N)
  dockerd --iptables=false >"$log_file" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq "$DOCKERD_START_TIMEOUT_S"); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    tail -20 "$log_file"
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
    dockerd_pid=""
    skip "dockerd --iptables=false did not start within $DOCKERD_START_TIMEOUT_S s (log above)"
  fi
  log "Docker engine: started dockerd --iptables=false (pid $dockerd_pid) in $(since "$started") s"
}

find_compose() {
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null || apt_install docker-compose; then
    compose=(docker-compose)
  else
    fail "neither docker compose (v2) nor docker-compose (v1) is installed"
  fi
  log "compose: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || echo '?'))"
}

base_image() {
  if [ -n "${AURORA_BASE_IMAGE:-}" ]; then
    echo "$AURORA_BASE_IMAGE"
  elif docker image inspect "$DEFAULT_BASE_IMAGE" >/dev/null 2>&1 \
      || timeout "$PULL_TIMEOUT_S" docker pull -q "$DEFAULT_BASE_IMAGE" >/dev/null 2>&1; then
    echo "$DEFAULT_BASE_IMAGE"
  else
    echo "$LOCAL_BASE_IMAGE"
  fi
}

debootstrap_base_image() {
  if docker image inspect "$LOCAL_BASE_IMAGE" >/dev/null 2>&1; then
    log "base image: $LOCAL_BASE_IMAGE (made by an earlier run)"
    return
  fi
  command -v debootstrap >/dev/null || apt_install debootstrap || fail "debootstrap is not installed"
  as_root || fail "debootstrap needs root"
  log "base image: $DEFAULT_BASE_IMAGE cannot be pulled; debootstrap $DEBIAN_SUITE into $LOCAL_BASE_IMAGE"
  local started rootfs="$WORK_DIR/rootfs"
  started=$(date +%s.%N)
  debootstrap --variant=minbase --include=python3,python3-venv "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
    >"$WORK_DIR/debootstrap.log" 2>&1 || { tail -20 "$WORK_DIR/debootstrap.log"; fail "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$LOCAL_BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "  $LOCAL_BASE_IMAGE made in $(since "$started") s"
}

fill_wheelhouse() {
  # The image's Python, glibc and machine decide which wheels fit it.
  local base=$1 python_tag glibc machine platforms=()
  read -r python_tag glibc machine < <(docker run --rm "$base" python3 -c \
    'import platform, sys; print("%d%d" % sys.version_info[:2], platform.libc_ver()[1], platform.machine())')
  [ -n "$machine" ] || fail "could not run python3 in $base"
  for minor in $(seq 17 "${glibc#2.}"); do platforms+=(--platform "manylinux_2_${minor}_${machine}"); done
  .venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >"$WORK_DIR/requirements.txt"
  printf 'setuptools>=61\nwheel\n' >>"$WORK_DIR/requirements.txt"
  if .venv/bin/pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$WHEELHOUSE" \
      --python-version "$python_tag" --implementation cp --abi "cp$python_tag" "${platforms[@]}" \
      --platform "manylinux2014_${machine}" -r "$WORK_DIR/requirements.txt" >"$WORK_DIR/pip.log" 2>&1; then
    log "wheelhouse: $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels for cp$python_tag, glibc $glibc, $machine in $WHEELHOUSE"
  elif ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
    log "wheelhouse: pip download failed (see below); building from the wheels already in $WHEELHOUSE"
    tail -5 "$WORK_DIR/pip.log"
  else
    tail -20 "$WORK_DIR/pip.log"
    fail "pip download could not fill $WHEELHOUSE"
  fi
}

build_image() {
  local base=$1 started
  started=$(date +%s.%N)
  if ! docker build --build-arg "BASE_IMAGE=$base" -t "$IMAGE" . >"$WORK_DIR/build.log" 2>&1; then
    tail -40 "$WORK_DIR/build.log"
    fail "docker build failed"
  fi
  log "image: $IMAGE built from $base in $(since "$started") s"
  # Earlier builds of ours, now untagged (the next build then starts its build stage afresh: ~10 s).
  docker image prune -f --filter "label=org.opencontainers.image.title=aurora-db" >/dev/null
}

start_engine
log "scripts/install.sh (the client side: psycopg in .venv)"
scripts/install.sh >"$WORK_DIR/install.log" 2>&1 || { cat "$WORK_DIR/install.log"; fail "scripts/install.sh failed"; }
find_compose
base=$(base_image)
if [ "$base" = "$LOCAL_BASE_IMAGE" ] && [ -z "${AURORA_BASE_IMAGE:-}" ]; then
  debootstrap_base_image
else
  log "base image: $base"
fi
fill_wheelhouse "$base"
build_image "$base"
export AURORA_IMAGE=$IMAGE AURORA_NET=$NET
cluster_started=1
.venv/bin/python scripts/compose_e2e.py --compose "${compose[*]}" --project "$PROJECT" \
  --writer-port "$WRITER_PORT" --reader-port "$READER_PORT"
