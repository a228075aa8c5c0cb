#!/usr/bin/env python3
"""Checks the rendered manifests for what pulse promises its deployers.

Usage: k8s_policy.py BASE.yaml CRONJOB.yaml  (output of `kubectl kustomize`)

Schema validity is kubernetes-validate's job; this checks the meaning: the
Service `api` on 3000, the api and probe workloads, the restricted security
context on every container, components mounted from ConfigMaps that exist
and fit the 1 MiB ConfigMap limit, and the CronJob overlay. Exits 1 and
lists every failure.
"""
import base64
import sys
import tomllib

import yaml

CONFIGMAP_LIMIT = 1024 * 1024
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def load(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def find(objects, kind, name_prefix):
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]


def one(objects, kind, name, where):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    check(len(found) == 1, f"{where}: expected one {kind} {name!r}, found {len(found)}")
    return found[0] if found else None


def check_pod(pod_spec, where, configmaps, component):
    sc = pod_spec.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot must be true")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile must be RuntimeDefault")
    check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: the pod needs no service account token")
    for c in pod_spec["containers"]:
        cw = f"{where} container {c['name']}"
        csc = c.get("securityContext", {})
        check(csc.get("runAsNonRoot") is True, f"{cw}: runAsNonRoot must be true")
        check(csc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
        check(csc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
        check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities.drop must be [ALL]")
        check(csc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{cw}: seccompProfile must be RuntimeDefault")
        resources = c.get("resources", {})
        check(resources.get("requests", {}).get("cpu") and resources.get("requests", {}).get("memory"), f"{cw}: needs cpu and memory requests")
        check(resources.get("limits", {}).get("memory"), f"{cw}: needs a memory limit")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        check("/components" in mounts, f"{cw}: must mount /components")
        if "/components" in mounts:
            volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == mounts["/components"]["name"]), None)
            cm_name = (volume or {}).get("configMap", {}).get("name")
            check(cm_name in configmaps, f"{cw}: /components must come from a ConfigMap in the render, got {cm_name!r}")
            if cm_name in configmaps:
                data = configmaps[cm_name].get("binaryData", {})
                check(f"{component}.wasm" in data, f"{cw}: ConfigMap {cm_name} must hold {component}.wasm as binaryData")
                if f"{component}.wasm" in data:
                    wasm = base64.b64decode(data[f"{component}.wasm"])
                    check(wasm[:4] == b"\0asm", f"{cw}: {component}.wasm in {cm_name} is not WebAssembly")
                size = len(yaml.safe_dump(configmaps[cm_name]))
                check(size < CONFIGMAP_LIMIT, f"ConfigMap {cm_name} is {size} bytes; ConfigMaps must stay under 1 MiB")
        args = c.get("args", [])
        if "--config=/config/pulse.toml" in args:
            check_config(pod_spec, c, cw, configmaps, component)
        else:
            check(f"--{'handler' if component == 'health' else 'probe'}=/components/{component}.wasm" in args,
                  f"{cw}: must load /components/{component}.wasm, args are {args}")


def check_config(pod_spec, container, where, configmaps, component):
    """A container run with --config: /config must hold a pulse.toml whose probes pass the policy."""
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    check("/config" in mounts, f"{where}: --config=/config/pulse.toml needs a /config mount")
    if "/config" not in mounts:
        return
    volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == mounts["/config"]["name"]), None)
    cm_name = (volume or {}).get("configMap", {}).get("name")
    check(cm_name in configmaps, f"{where}: /config must come from a ConfigMap in the render, got {cm_name!r}")
    text = configmaps.get(cm_name, {}).get("data", {}).get("pulse.toml")
    check(text is not None, f"{where}: ConfigMap {cm_name} must hold pulse.toml")
    if text is None:
        return
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        check(False, f"{where}: pulse.toml in {cm_name} is not TOML: {e}")
        return
    probes = config.get("probe", [])
    check(len(probes) >= 1, f"{where}: pulse.toml must define at least one [[probe]]")
    for probe in probes:
        pw = f"{where}: pulse.toml probe {probe.get('name')!r}"
        check(probe.get("component") == f"/components/{component}.wasm", f"{pw}: component must be /components/{component}.wasm")
        probe_settings_ok(probe, pw)


def probe_settings_ok(probe, where):
    check(probe.get("target") == "http://api:3000/healthcheck", f"{where}: must target http://api:3000/healthcheck")
    check(probe.get("schedule") == "0 8 * * *", f"{where}: must fire at 0 8 * * *")
    check(bool(probe.get("time_zone")), f"{where}: must set its time zone explicitly")


def configmaps_of(objects):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}


def check_api(objects, where):
    configmaps = configmaps_of(objects)
    service = one(objects, "Service", "api", where)
    api = one(objects, "Deployment", "api", where)
    if service:
        ports = service["spec"]["ports"]
        check(any(p["port"] == 3000 and p.get("targetPort") == "http" for p in ports), f"{where}: Service api must expose 3000 -> http")
    if api:
        spec = api["spec"]
        check(spec.get("replicas") == 2, f"{where}: api must run 2 replicas")
        pod = spec["template"]
        if service:
            selector = service["spec"]["selector"]
            labels = pod["metadata"]["labels"]
            check(all(labels.get(k) == v for k, v in selector.items()), f"{where}: Service api selects {selector}, pods have {labels}")
        check_pod(pod["spec"], f"{where} Deployment api", configmaps, "health")
        c = pod["spec"]["containers"][0]
        check(c["args"][0] == "serve", f"{where}: api must run `pulse serve`")
        check(any(p["containerPort"] == 3000 and p.get("name") == "http" for p in c.get("ports", [])), f"{where}: api container port 3000 named http")
        admin_probes_ok(c, where, "api")


def admin_probes_ok(container, where, name):
    """Kubernetes' probes must use pulse's admin port, which no component can shadow."""
    check(any(p["containerPort"] == 9090 and p.get("name") == "admin" for p in container.get("ports", [])),
          f"{where}: {name} container must expose the admin port 9090 named admin")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        http = container.get(probe, {}).get("httpGet", {})
        check(http.get("path") == path and http.get("port") == "admin", f"{where}: {name} {probe} must GET {path} on admin")


def probe_args_ok(args, where, scheduled):
    check("--target=http://api:3000/healthcheck" in args, f"{where}: probe must target http://api:3000/healthcheck, args {args}")
    if scheduled:
        check("--schedule=0 8 * * *" in args, f"{where}: probe must fire at 0 8 * * *, args {args}")
        check(any(a.startswith("--time-zone=") for a in args), f"{where}: probe must set its time zone explicitly, args {args}")


def main(base_path, cron_path):
    base = load(base_path)
    check_api(base, "base")
    probe = one(base, "Deployment", "probe", "base")
    if probe:
        spec = probe["spec"]
        check(spec.get("replicas") == 1, "base: probe must run exactly 1 replica")
        check(spec.get("strategy", {}).get("type") == "Recreate", "base: probe must use the Recreate strategy")
        pod = spec["template"]["spec"]
        check_pod(pod, "base Deployment probe", configmaps_of(base), "probe")
        args = pod["containers"][0]["args"]
        check(args[0] == "schedule", "base: probe must run `pulse schedule`")
        admin_probes_ok(pod["containers"][0], "base Deployment probe", "probe")
        check("--config=/config/pulse.toml" in args, "base: the probe must read its probes from /config/pulse.toml")

    cron = load(cron_path)
    check_api(cron, "cronjob overlay")
    check(not find(cron, "Deployment", "probe"), "cronjob overlay: the probe Deployment must be removed")
    job = one(cron, "CronJob", "probe", "cronjob overlay")
    if job:
        spec = job["spec"]
        check(spec.get("schedule") == "0 8 * * *", "cronjob overlay: schedule must be 0 8 * * *")
        check(bool(spec.get("timeZone")), "cronjob overlay: timeZone must be set")
        check(spec.get("concurrencyPolicy") == "Forbid", "cronjob overlay: concurrencyPolicy must be Forbid")
        check(isinstance(spec.get("startingDeadlineSeconds"), int), "cronjob overlay: startingDeadlineSeconds must be set")
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        check_pod(pod, "cronjob overlay CronJob probe", configmaps_of(cron), "probe")
        args = pod["containers"][0]["args"]
        check(args[0] == "probe", "cronjob overlay: the CronJob must run `pulse probe`")
        probe_args_ok(args, "cronjob overlay", scheduled=False)

    if failures:
        print("k8s policy check failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"k8s policy check passed ({len(base)} objects in the base, {len(cron)} in the cronjob overlay)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
