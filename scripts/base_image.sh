#!/usr/bin/env bash
# Builds rdeploy's base image from Debian packages (no Docker Hub needed): mmdebstrap makes
# a trixie root filesystem with the packages in container_templates/base/packages.txt, and
# the container engine imports it. The tag is the list's content hash, so a build happens
# once per list (cached); prints the image name. On CodeBuild the recipe's BASE_IMAGE is a
# Debian image from a public registry instead (docs/containers.md).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${RDEPLOY_CONTAINER_CLI:-podman}"
image="$(.venv/bin/python -c 'import container_templates as t; print(t.base_image())')"
if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "$image"; exit 0
fi
packages=$(grep -v '^#' container_templates/base/packages.txt | xargs | tr ' ' ',')
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
echo "base_image: building $image (mmdebstrap trixie: $packages)" >&2
mmdebstrap --quiet --variant=minbase --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  trixie "$work/base.tar" >&2
"$engine" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$work/base.tar" "$image" >/dev/null
echo "$image"
