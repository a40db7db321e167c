#!/usr/bin/env bash
# Installs whatever is missing on a Debian machine (as root): Debian packages, then the
# pinned Python dependencies into .venv. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  python3-venv redis-server
  r-base-core r-cran-rserve r-cran-jsonlite r-cran-plumber r-cran-httpuv
  r-cran-randomforest r-cran-ranger r-cran-glmnet r-cran-rpart r-cran-e1071
  # The R client package (clients/r/rdeploy) and its tests.
  r-cran-httr2 r-cran-cli r-cran-curl r-cran-testthat
  haproxy nginx-light wrk chromium chromium-driver unzip curl
  # The container engine model code runs in, and what builds its base image.
  podman runc mmdebstrap containernetworking-plugins iptables docker-registry
)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts redis-server as a service on install; rdeploy starts its own where it needs one.

# Installs Debian packages while refusing every service start (policy-rc.d exit 101, whatever
# init there is): what the packages bring as daemons is not for this machine to run.
policy=/usr/sbin/policy-rc.d
install_without_services() {
  saved=""
  if [ -e "$policy" ]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
  fi
  restore_policy() {
    if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "$@"
  restore_policy
  trap - EXIT
}

# A Docker CLI for the tests of RDEPLOY_CONTAINER_CLI=docker (they drive podman's Docker API
# with it). Debian ships it only in docker.io, with dockerd and containerd: no daemon may start.
if ! command -v docker >/dev/null; then
  echo "bootstrap: installing a Docker CLI (docker.io, no daemon started)"
  docker_daemons() { pgrep -x dockerd || true; pgrep -x containerd || true; }
  daemons=$(docker_daemons)
  install_without_services docker.io
  if [ "$(docker_daemons)" != "$daemons" ]; then
    echo "bootstrap: installing docker.io started a daemon (dockerd or containerd); stop it" >&2
    exit 1
  fi
fi

# PostgreSQL 15's binaries: every test session runs a throwaway cluster of its own
# (testsupport/postgres.py, docs/testing.md); the system's cluster is never started.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  echo "bootstrap: installing PostgreSQL 15 (postgresql, system cluster not started)"
  install_without_services postgresql
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
wanted=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "bootstrap: installing Python packages"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$wanted" > "$stamp"
fi

# Model code runs only in containers of the serving image, built on this base (cached).
export CONTAINERS_CONF="$PWD/config/containers.conf"
scripts/base_image.sh >/dev/null
