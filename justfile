# pulse: build, test, run, package and check the WebAssembly host.
# `just` with no arguments lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The host is built once, static (musl), in release: that one binary is what
# the tests exercise, `just run` runs and the image ships.
host_target := "x86_64-unknown-linux-musl"
host_bin := "target/" + host_target + "/release/pulse"
components := "target/components"
version := `sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1`
image := "localhost/pulse:" + version
bench_cache := env_var_or_default("PULSE_BENCH_CACHE", env_var("HOME") / ".cache/pulse-bench")
wasmtime_bin := bench_cache / "wasmtime-48.0.8/bin/wasmtime"

# podman needs the runc runtime and explicit ulimits on these machines;
# set CONTAINERS_CONF yourself to use other settings.
export CONTAINERS_CONF := env_var_or_default("CONTAINERS_CONF", justfile_directory() / "ci/containers.conf")

# List the recipes.
default:
    @just --list --unsorted

# Install what building needs and is missing: the Rust targets and musl-tools (as root; otherwise print the command).
setup:
    bash ci/setup.sh build

# Install what the tests need and is missing: podman, dnsmasq, wrk, kubernetes-validate, ... (as root; otherwise print the command).
setup-test:
    bash ci/setup.sh test

# The fast loop, no root and no containers: formatting, clippy with warnings as errors, unit tests (the in-process serve tests use the built components).
# Same profile and target as `just build`, so Wasmtime is compiled once for lint and tests alike.
lint: build-components
    cargo fmt --all --check
    cargo clippy --release --locked --target {{host_target}} -p pulse --all-targets -- -D warnings
    cargo test --release --locked --target {{host_target}} -p pulse --lib

# Build the components (release, wasm32-wasip2, the example counter too) into target/components/; health and probe also into the ConfigMap overlay.
build-components: setup
    cargo build --release --locked --target wasm32-wasip2 -p health -p health-p3 -p probe -p faulty -p faulty-p3 -p counter
    mkdir -p {{components}} k8s/overlays/configmap/components
    cp target/wasm32-wasip2/release/{health,probe,faulty,counter}.wasm {{components}}/
    cp target/wasm32-wasip2/release/health_p3.wasm {{components}}/health-p3.wasm
    cp target/wasm32-wasip2/release/faulty_p3.wasm {{components}}/faulty-p3.wasm
    cp {{components}}/health.wasm {{components}}/probe.wasm k8s/overlays/configmap/components/

# Build the JavaScript health handler (components/health-js) with componentize-js from npm, when npm is there; 13 MB, about 40 s.
build-js:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v npm >/dev/null; then
        echo "note: npm not found; skipping components/health-js (install Node.js and npm to build it)" >&2
        exit 0
    fi
    out={{components}}/health-js.wasm
    if [ -f "$out" ] && [ "$out" -nt components/health-js/app.js ] && [ "$out" -nt components/health-js/package-lock.json ]; then
        exit 0
    fi
    (cd components/health-js && npm install --no-audit --no-fund --silent)
    # StarlingMonkey implements wasi:http 0.2.10: its world is the vendored
    # WASI WIT of the pinned crates, with that version number.
    wit=target/health-js-wit
    rm -rf "$wit" && mkdir -p "$wit/deps" {{components}}
    for f in wit/deps/*.wit; do
        sed 's/@0\.2\.12/@0.2.10/g; s/version = 0\.2\.12/version = 0.2.10/g' "$f" > "$wit/deps/$(basename "$f")"
    done
    printf 'package pulse:health-js;\n\nworld health {\n  include wasi:http/proxy@0.2.10;\n}\n' > "$wit/world.wit"
    components/health-js/node_modules/.bin/componentize-js components/health-js/app.js \
        --wit "$wit" --world-name health -o "$out"
    echo "built $out ($(stat -c %s "$out") bytes)"

# Build the components and the static host; the host is also copied to target/release/pulse.
build: build-components build-js
    cargo build --release --locked --target {{host_target}} -p pulse
    mkdir -p target/release
    cp {{host_bin}} target/release/pulse

# Serve on :3000 and probe that server at start and then daily at 08:00 UTC.
run *ARGS: build
    target/release/pulse run --listen 0.0.0.0:3000 \
        --handler {{components}}/health.wasm --probe {{components}}/probe.wasm \
        --run-at-start {{ARGS}}

# Run every test: unit, integration (real binary, real components), manifests, and the end-to-end DNS and container tests.
test: setup-test build k8s-check image
    #!/usr/bin/env bash
    set -euo pipefail
    export PULSE_TEST_IMAGE={{image}}
    export PULSE_TEST_HEALTH_IMAGE=$(just component-image {{components}}/health.wasm)
    export PULSE_TEST_JS_IMAGE=$(just component-image {{components}}/health-js.wasm)
    cargo test --release --locked --target {{host_target}} -p pulse -- --test-threads 2
    python3 ci/bench.py --smoke --pulse {{host_bin}} --health {{components}}/health.wasm --health-p3 {{components}}/health-p3.wasm --faulty {{components}}/faulty.wasm

# Build the container image (FROM scratch: the static binary and the default components) with podman, or docker.
image: build
    #!/usr/bin/env bash
    set -euo pipefail
    engine=$(command -v podman || command -v docker) || { echo "error: just image needs podman or docker" >&2; exit 1; }
    context=target/image
    rm -rf "$context" && mkdir -p "$context"
    cp Containerfile {{host_bin}} {{components}}/health.wasm {{components}}/probe.wasm "$context"/
    "$engine" build --quiet --file "$context/Containerfile" --tag {{image}} "$context" >/dev/null
    size=$("$engine" image inspect {{image}} --format '{{{{.Size}}')
    echo "built {{image}} with $(basename "$engine"): $((size / 1000)) kB"

# Build a FROM scratch image holding only FILE as /component.wasm and its precompiled form /component.cwasm, for a Kubernetes image volume.
component-image FILE TAG="": build
    #!/usr/bin/env bash
    set -euo pipefail
    engine=$(command -v podman || command -v docker) || { echo "error: just component-image needs podman or docker" >&2; exit 1; }
    file="{{FILE}}"
    [ -f "$file" ] || { echo "error: no component at $file" >&2; exit 1; }
    stem=$(basename "$file" .wasm)
    tag="{{TAG}}"
    tag=${tag:-localhost/pulse-component-$stem:{{version}}}
    context=target/component-images/$stem
    rm -rf "$context" && mkdir -p "$context"
    cp "$file" "$context/component.wasm"
    # Precompiled by this very pulse build, for this kind of CPU; pulse
    # falls back to component.wasm (and says why) anywhere else.
    target/release/pulse compile "$context/component.wasm" -o "$context/component.cwasm" >&2
    printf 'FROM scratch\nCOPY component.wasm component.cwasm /\n' > "$context/Containerfile"
    "$engine" build --quiet --file "$context/Containerfile" --tag "$tag" "$context" >/dev/null
    digest=$("$engine" image inspect "$tag" --format '{{{{.Digest}}')
    echo "built $tag ($digest) with $(basename "$engine"): mount it at /components and give --handler /components/component.wasm" >&2
    echo "$tag"

# Render the kustomizations and validate every object against the Kubernetes schemas and pulse's own policy.
k8s-check: build-components
    #!/usr/bin/env bash
    set -euo pipefail
    out=target/k8s && mkdir -p "$out"
    kubectl kustomize k8s > "$out/base.yaml"
    kubectl kustomize k8s/overlays/cronjob > "$out/cronjob.yaml"
    kubectl kustomize k8s/overlays/configmap > "$out/configmap.yaml"
    kubectl kustomize k8s/overlays/monitoring > "$out/monitoring.yaml"
    kubectl kustomize k8s/overlays/cronjob-monitoring > "$out/cronjob-monitoring.yaml"
    kubectl kustomize k8s/overlays/redis > "$out/redis.yaml"
    # PodMonitor and PrometheusRule have no schema here: k8s_policy.py and
    # promtool check what they mean.
    kubernetes-validate --strict --quiet --no-warn --kubernetes-version 1.37.0 "$out/base.yaml" "$out/cronjob.yaml" "$out/configmap.yaml" "$out/monitoring.yaml" "$out/cronjob-monitoring.yaml" "$out/redis.yaml"
    python3 ci/k8s_policy.py "$out/base.yaml" "$out/cronjob.yaml" "$out/configmap.yaml" "$out/monitoring.yaml" "$out/cronjob-monitoring.yaml" "$out/redis.yaml"
    rm -rf target/alerts
    python3 ci/rules_from_manifests.py target/alerts "$out/cronjob-monitoring.yaml" >/dev/null
    cp ci/alerts.test.yaml target/alerts/
    promtool check rules target/alerts/*.rules.yaml
    promtool test rules target/alerts/alerts.test.yaml

# Copy the vendored WASI WIT from the pinned wasmtime-wasi-http and wasmtime-wasi-config crates into wit/deps.
vendor-wit:
    #!/usr/bin/env bash
    set -euo pipefail
    version=$(cargo metadata --format-version 1 --locked | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wasmtime-wasi-http"))')
    src=$(dirname "$(cargo metadata --format-version 1 --locked | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wasmtime-wasi-http"))')")/wit/deps
    cp "$src"/*.wit wit/deps/
    config=$(dirname "$(cargo metadata --format-version 1 --locked | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wasmtime-wasi-config"))')")/wit/deps/config
    mkdir -p wit/deps/config && cp "$config"/*.wit wit/deps/config/
    echo "wit/deps now matches wasmtime-wasi-http and wasmtime-wasi-config $version"

# Benchmark pulse serve against wasmtime serve, a native hyper server and the Express app; writes docs/BENCHMARKS.md.
bench rounds="5" duration="10": image
    #!/usr/bin/env bash
    set -euo pipefail
    engine=$(command -v podman || command -v docker)
    image_bytes=$("$engine" image inspect {{image}} --format '{{{{.Size}}')
    cargo build --release --locked --target {{host_target}} -p bench-native
    if command -v npm >/dev/null && [ ! -d bench/express/node_modules ]; then
        (cd bench/express && npm ci --no-audit --no-fund --silent)
    fi
    [ -x "{{wasmtime_bin}}" ] || echo "note: no wasmtime CLI at {{wasmtime_bin}}; run 'just bench-wasmtime' (about 20 minutes) to compare with it" >&2
    python3 ci/bench.py --pulse {{host_bin}} --health {{components}}/health.wasm --health-p3 {{components}}/health-p3.wasm \
        --health-js {{components}}/health-js.wasm --faulty {{components}}/faulty.wasm --native target/{{host_target}}/release/bench-native --wasmtime {{wasmtime_bin}} \
        --express bench/express --rounds {{rounds}} --duration {{duration}} --image-bytes "$image_bytes" --output docs/BENCHMARKS.md

# The async runtime's shape on two CPUs: one multi-thread process against one current-thread process per CPU (docs/BENCHMARKS.md).
bench-runtime-shape rounds="3" duration="5": build
    python3 ci/runtime_shape.py --pulse {{host_bin}} --health {{components}}/health.wasm --health-p3 {{components}}/health-p3.wasm \
        --rounds {{rounds}} --duration {{duration}}

# Install wasmtime-cli 48.0.8 (the baseline of just bench) into the bench cache; about 20 minutes.
bench-wasmtime:
    cargo install wasmtime-cli --version 48.0.8 --locked --root {{bench_cache}}/wasmtime-48.0.8
