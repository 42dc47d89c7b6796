#!/usr/bin/env bash
# The container engine for docker/Dockerfile on a Debian machine: podman + runc, rootful.
#
#   docker/engine.sh setup              install podman, runc and debootstrap (apt, idempotent)
#   docker/engine.sh base [IMAGE]       a Debian bookworm base image made with debootstrap
#                                       (no registry needed), once; prints its name
#   docker/engine.sh build [TAG] [ARG...]
#                                       build docker/Dockerfile from the repository root;
#                                       ARGs go to `podman build` (e.g. --target s3store)
#   docker/engine.sh run ARG...         `podman run` with this folder's containers.conf
#
# Environment:
#   CONTAINERS_CONF  podman's configuration (default: docker/containers.conf, i.e. runc and
#                    no default ulimits; see that file)
#   EO_BASE          base image for `build` (default: the Dockerfile's, debian:bookworm-slim
#                    from Docker Hub); `EO_BASE=$(docker/engine.sh base)` where no registry
#                    is reachable
#   EXTRA_CA         a PEM bundle trusted during the build (TLS-inspecting proxy), passed as
#                    the build secret extra_ca; e.g. EXTRA_CA=/etc/ssl/certs/ca-certificates.crt
#   DEBIAN_MIRROR    for `base` (default http://deb.debian.org/debian)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

version() {
    sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1
}

setup() {
    local missing=()
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "engine.sh: ${missing[*]} missing and not root: sudo apt-get install -y podman runc debootstrap" >&2
            return 1
        fi
        echo "engine.sh: installing ${missing[*]} (apt)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null \
            || { apt-get update -q >/dev/null \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null; }
    fi
    # Fails here, with podman's own message, where containers cannot run at all.
    podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' >/dev/null
    echo "engine.sh: $(podman --version), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), CONTAINERS_CONF=$CONTAINERS_CONF" >&2
}

base() {
    local image="${1:-localhost/eo-debian-bookworm:minbase}"
    if podman image exists "$image"; then
        echo "$image"
        return 0
    fi
    local dir
    dir="$(mktemp -d /var/tmp/eo-debootstrap.XXXXXX)"
    trap 'rm -rf "$dir"' RETURN
    echo "engine.sh: debootstrap bookworm -> $image" >&2
    debootstrap --variant=minbase bookworm "$dir/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
        >"$dir/debootstrap.log" 2>&1 || { tail -20 "$dir/debootstrap.log" >&2; return 1; }
    # The downloaded packages are installed: not needed in the image.
    rm -f "$dir"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$dir/rootfs" -c . | podman import --quiet - "$image" >/dev/null
    echo "$image"
}

build() {
    local tag="${1:-localhost/eo-lakehouse:$(version)}"
    shift || true
    local args=(--file "$here/Dockerfile" --tag "$tag" --network host --layers)
    if [ -n "${EO_BASE:-}" ]; then
        args+=(--build-arg "BASE=$EO_BASE")
    fi
    if [ -n "${EXTRA_CA:-}" ]; then
        [ -s "$EXTRA_CA" ] || { echo "engine.sh: EXTRA_CA=$EXTRA_CA is not a file" >&2; return 1; }
        args+=(--secret "id=extra_ca,src=$EXTRA_CA")
    fi
    echo "engine.sh: podman build ${args[*]} $* $repo" >&2
    # The build's progress to stderr, beside this script's messages; stdout: the tag built.
    podman build "${args[@]}" "$@" "$repo" >&2
    echo "$tag"
}

case "${1:-}" in
    setup) setup ;;
    base) shift; base "$@" ;;
    build) shift; build "$@" ;;
    run) shift; exec podman run "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
