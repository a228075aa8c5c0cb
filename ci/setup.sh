#!/usr/bin/env bash
# Installs what pulse's recipes need and are missing, on Debian with Rust
# (rustup). `just` calls it: `ci/setup.sh build` before building,
# `ci/setup.sh test` before the tests. As root it installs; otherwise it
# stops at once, printing the one command that would.
set -euo pipefail

level=${1:-build}
case "$level" in
    build | test) ;;
    *) echo "usage: $0 build|test" >&2; exit 64 ;;
esac

# Rust targets: these machines do not install them on demand.
installed=$(rustup target list --installed)
for target in wasm32-wasip2 x86_64-unknown-linux-musl; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

# Debian packages, each with what needs it.
packages=()
command -v musl-gcc >/dev/null || packages+=(musl-tools)                # the static host build (C code of its dependencies)
if [ "$level" = test ]; then
    command -v podman >/dev/null || packages+=(podman)                  # just image and the container test
    command -v runc >/dev/null || packages+=(runc)
    [ -x /usr/lib/podman/netavark ] || packages+=(netavark aardvark-dns)
    command -v iptables >/dev/null || packages+=(iptables)              # netavark builds container networks with it
    command -v wrk >/dev/null || packages+=(wrk)                        # the bench smoke run
    command -v dnsmasq >/dev/null || packages+=(dnsmasq-base)           # cluster DNS in the end-to-end test
    command -v ip >/dev/null || packages+=(iproute2)                    # network namespaces
    command -v getent >/dev/null || packages+=(libc-bin)
    command -v promtool >/dev/null || packages+=(prometheus)            # alert rules: promtool, and a real Prometheus in the tests
    command -v redis-server >/dev/null || packages+=(redis-server)      # wasi:keyvalue on a real Redis in the tests
fi
if ((${#packages[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing Debian packages; install them with:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
        exit 1
    fi
    echo "installing Debian packages: ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${packages[@]}" >/dev/null
fi

[ "$level" = test ] || exit 0

# Python tools of the tests.
pip_install() { pip install --quiet --disable-pip-version-check "$@"; }
command -v kubernetes-validate >/dev/null || pip_install kubernetes-validate   # just k8s-check
python3 -c "import prometheus_client" 2>/dev/null || pip_install prometheus-client   # /metrics read by its OpenMetrics parser
python3 -c "import opentelemetry.proto" 2>/dev/null || pip_install opentelemetry-proto # the test's OTLP receiver decodes spans with it
hash -r
if ! command -v kubectl >/dev/null; then
    echo "error: kubectl is missing; just k8s-check renders the manifests with 'kubectl kustomize'. Install kubectl (it is not a Debian package) and run again." >&2
    exit 1
fi
