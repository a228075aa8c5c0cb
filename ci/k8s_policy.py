#!/usr/bin/env python3
"""Checks the rendered manifests for what pulse promises its deployers.

Usage: k8s_policy.py BASE.yaml CRONJOB.yaml CONFIGMAP.yaml MONITORING.yaml CRONJOB-MONITORING.yaml REDIS.yaml
       (each the output of `kubectl kustomize` of the base and the overlays)

Schema validity is kubernetes-validate's job; this checks the meaning: the
Service `api` on 3000; the api and probe workloads with the restricted
security context; components mounted read-only at /components from a
component image (or, in the configmap overlay, a ConfigMap that fits what
`kubectl apply` can carry); start-up, readiness and liveness probes on the
admin port; grace periods that cover the preStop sleep and pulse's own
drain; memory limits that cover the guests' budget; one CPU per api pod
(so pulse's current-thread runtime); the compilation
cache's limit below its volume's; the probe's schedule state on an
emptyDir; the PodDisruptionBudget, topology spread and NetworkPolicies; the
CronJob overlay; and the monitoring overlays (a PodMonitor that scrapes
every pulse pod's admin port, every alert with its annotations); and the
redis overlay (the api's keyvalue store on the Service `redis`, its
password from a Secret, and only the api let through to Redis). Exits 1
listing every failure.
"""
import base64
import json
import os
import re
import sys
import tomllib

import yaml

CONFIGMAP_LIMIT = 1024 * 1024            # a ConfigMap's own limit (server-side apply)
ANNOTATIONS_LIMIT = 256 * 1024           # all annotations of an object (client-side apply)
LABELS = {"api": {"app.kubernetes.io/name": "pulse", "app.kubernetes.io/component": "api"},
          "probe": {"app.kubernetes.io/name": "pulse", "app.kubernetes.io/component": "probe"}}
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def load(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def one(objects, kind, name, where):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    check(len(found) == 1, f"{where}: expected one {kind} {name!r}, found {len(found)}")
    return found[0] if found else None


def quantity(text):
    """Bytes of a Kubernetes or pulse size: 256Mi, 1Gi, 64M, 65536."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|K|M|G)?", str(text))
    check(m is not None, f"cannot read the size {text!r}")
    if not m:
        return 0
    scale = {None: 1, "k": 1000, "K": 1000, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(m.group(1)) * scale[m.group(2)]


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(text))
    check(m is not None, f"cannot read the duration {text!r}")
    if not m:
        return 0
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[m.group(2)]


def flag(args, name, default=None):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def env(container, name, default=None):
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), default)


def check_pod(pod_spec, where, configmaps, delivery):
    """The restricted security context, resources, and /components."""
    sc = pod_spec.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot must be true")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile must be RuntimeDefault")
    check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: the pod needs no service account token")
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
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
        if "/components" not in mounts:
            continue
        check(mounts["/components"].get("readOnly") is True, f"{cw}: /components must be mounted read-only")
        volume = volumes.get(mounts["/components"]["name"], {})
        if delivery == "image":
            reference = volume.get("image", {}).get("reference", "")
            check(bool(reference), f"{cw}: /components must be an image volume (a component image), got {volume}")
            check("/" in reference, f"{cw}: the component image reference {reference!r} was not set by kustomize images:")
        else:
            check_configmap_volume(volume, cw, configmaps)
        cache = mounts.get("/var/cache/pulse")
        if cache and env(c, "PULSE_CACHE_DIR") == "/var/cache/pulse":
            size_limit = volumes.get(cache["name"], {}).get("emptyDir", {}).get("sizeLimit")
            max_size = env(c, "PULSE_CACHE_MAX_SIZE")
            check(size_limit and max_size, f"{cw}: the compilation cache needs an emptyDir sizeLimit and PULSE_CACHE_MAX_SIZE below it")
            if size_limit and max_size:
                check(quantity(max_size) * 2 <= quantity(size_limit),
                      f"{cw}: PULSE_CACHE_MAX_SIZE {max_size} is a soft limit; keep it at most half the emptyDir sizeLimit {size_limit}")


def check_configmap_volume(volume, where, configmaps):
    name = volume.get("configMap", {}).get("name")
    check(name in configmaps, f"{where}: /components must come from a ConfigMap in the render, got {name!r}")
    if name not in configmaps:
        return
    cm = configmaps[name]
    data = cm.get("binaryData", {})
    check("component.wasm" in data, f"{where}: ConfigMap {name} must hold component.wasm as binaryData")
    if "component.wasm" in data:
        check(base64.b64decode(data["component.wasm"])[:4] == b"\0asm", f"{where}: component.wasm in {name} is not WebAssembly")
    # What `kubectl apply` (client side) writes into the annotation, and what
    # the API server stores: both must fit.
    annotation = len(json.dumps(cm, separators=(",", ":")))
    check(annotation < ANNOTATIONS_LIMIT,
          f"ConfigMap {name}: {annotation} bytes of JSON do not fit the 256 KiB last-applied-configuration annotation of a client-side apply; use `kubectl apply --server-side` or a component image")
    check(annotation < CONFIGMAP_LIMIT, f"ConfigMap {name} is {annotation} bytes; ConfigMaps must stay under 1 MiB: use a component image")


def check_probes(container, pod_spec, where, name, prestop_required):
    """Probes on the admin port; grace periods that cover preStop and the drain."""
    check(any(p["containerPort"] == 9090 and p.get("name") == "admin" for p in container.get("ports", [])),
          f"{where}: {name} container must expose the admin port 9090 named admin")
    for probe, path in (("startupProbe", "/livez"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        http = container.get(probe, {}).get("httpGet", {})
        check(http.get("path") == path and http.get("port") == "admin", f"{where}: {name} {probe} must GET {path} on admin")
    startup = container.get("startupProbe", {})
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    check(budget >= 30, f"{where}: {name} startupProbe allows {budget}s; give the process at least 30s to bind the admin port")
    args = container.get("args", [])
    check(flag(args, "admin-listen") == "0.0.0.0:9090", f"{where}: {name} must listen for the kubelet on --admin-listen=0.0.0.0:9090")
    prestop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if prestop_required:
        check(prestop >= 3, f"{where}: {name} needs a preStop sleep of a few seconds, so endpoints are removed before the listener closes")
    grace = seconds(flag(args, "shutdown-grace", "20s")) if args and args[0] == "serve" else seconds(flag(args, "timeout", "10s"))
    period = pod_spec.get("terminationGracePeriodSeconds", 30)
    check(period >= prestop + grace + 5,
          f"{where}: {name} terminationGracePeriodSeconds {period} must cover the preStop sleep ({prestop}s), pulse's drain ({grace}s) and a 5s margin")


def check_labels(pod_template, where, role):
    labels = pod_template["metadata"].get("labels", {})
    check(all(labels.get(k) == v for k, v in LABELS[role].items()), f"{where}: pods must be labelled {LABELS[role]}, have {labels}")


def check_hpa(hpa, api, where):
    """The api's autoscaler: autoscaling/v2 on CPU, from at least 2 replicas,
    with room to grow, a scale-down stabilisation window, and CPU requests
    on the pods it measures against."""
    target = hpa["scaleTargetRef"]
    check(target.get("kind") == "Deployment" and target.get("apiVersion") == "apps/v1", f"{where}: the HorizontalPodAutoscaler must target the api Deployment (apps/v1)")
    check(hpa.get("minReplicas", 1) >= 2, f"{where}: the HorizontalPodAutoscaler must keep at least 2 api replicas")
    check(hpa.get("maxReplicas", 0) > hpa.get("minReplicas", 1), f"{where}: the HorizontalPodAutoscaler's maxReplicas must exceed minReplicas")
    cpu = [m for m in hpa.get("metrics", []) if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
    check(bool(cpu) and 0 < cpu[0]["resource"]["target"].get("averageUtilization", 0) <= 90,
          f"{where}: the HorizontalPodAutoscaler must scale on CPU utilisation (at most 90 %)")
    down = hpa.get("behavior", {}).get("scaleDown", {})
    check(down.get("stabilizationWindowSeconds", 0) >= 60, f"{where}: the HorizontalPodAutoscaler needs a scale-down stabilisation window of at least 60 s")
    container = api["spec"]["template"]["spec"]["containers"][0]
    check("cpu" in container.get("resources", {}).get("requests", {}), f"{where}: the api container needs a CPU request for CPU utilisation to mean anything")


def check_api(objects, where, delivery):
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    service = one(objects, "Service", "api", where)
    api = one(objects, "Deployment", "api", where)
    if service:
        ports = service["spec"]["ports"]
        check(any(p["port"] == 3000 and p.get("targetPort") == "http" for p in ports), f"{where}: Service api must expose 3000 -> http")
        check(service["spec"]["selector"] == LABELS["api"], f"{where}: Service api must select {LABELS['api']}")
    if not api:
        return
    spec = api["spec"]
    hpa = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["scaleTargetRef"].get("name") == "api"]
    if hpa:
        check_hpa(hpa[0]["spec"], api, where)
        check("replicas" not in spec, f"{where}: api is scaled by a HorizontalPodAutoscaler, so its Deployment must set no replicas (kubectl apply would reset the count)")
    else:
        check(spec.get("replicas", 1) >= 2, f"{where}: api must run at least 2 replicas")
    check(spec["selector"].get("matchLabels") == LABELS["api"], f"{where}: api selector must be {LABELS['api']}")
    pod = spec["template"]
    check_labels(pod, f"{where} Deployment api", "api")
    check_pod(pod["spec"], f"{where} Deployment api", configmaps, delivery)
    c = pod["spec"]["containers"][0]
    args = c.get("args", [])
    check(args[:1] == ["serve"], f"{where}: api must run `pulse serve`")
    check(flag(args, "handler") == "/components/component.wasm", f"{where}: api must load /components/component.wasm, args are {args}")
    check(any(p["containerPort"] == 3000 and p.get("name") == "http" for p in c.get("ports", [])), f"{where}: api container port 3000 named http")
    check_probes(c, pod["spec"], where, "api", prestop_required=True)
    # Sizing: the guests' budget (3/4 of the limit unless --memory-budget
    # says) must hold --max-memory x --max-concurrency.
    limit = quantity(c["resources"]["limits"]["memory"])
    budget = quantity(flag(args, "memory-budget")) if flag(args, "memory-budget") else limit * 3 // 4
    check(budget <= limit * 3 // 4, f"{where}: --memory-budget {budget} leaves pulse less than a quarter of the {limit}-byte memory limit")
    max_memory = quantity(flag(args, "max-memory", "128Mi"))
    concurrency = int(flag(args, "max-concurrency", "256"))
    check(max_memory * concurrency <= budget,
          f"{where}: --max-memory x --max-concurrency = {max_memory * concurrency} bytes exceeds the guests' budget of {budget} bytes (3/4 of the memory limit)")
    # One CPU per api pod: pulse then runs its current-thread runtime, which
    # cost 28-38 % less CPU per request than a worker per CPU on two CPUs
    # (docs/BENCHMARKS.md); without a limit it would start a worker per CPU
    # of the node.
    cpu_limit = str(c["resources"].get("limits", {}).get("cpu", ""))
    check(cpu_limit in ("1", "1000m"), f"{where}: the api container's CPU limit must be 1 (one CPU per pod, more pods for more load), got {cpu_limit!r}")
    spread = pod["spec"].get("topologySpreadConstraints", [])
    check(any(t.get("topologyKey") == "kubernetes.io/hostname" and t.get("labelSelector", {}).get("matchLabels") == LABELS["api"] for t in spread),
          f"{where}: api replicas must be spread across nodes")
    pdb = one(objects, "PodDisruptionBudget", "api", where)
    if pdb:
        check(pdb["spec"].get("selector", {}).get("matchLabels") == LABELS["api"], f"{where}: the PodDisruptionBudget must select the api pods")
        check(pdb["spec"].get("minAvailable", 0) >= 1, f"{where}: the PodDisruptionBudget must keep at least one api pod")
    check_network_policies(objects, where)


def selects(policy, role):
    wanted = policy["spec"].get("podSelector", {}).get("matchLabels", {})
    return all(LABELS[role].get(k) == v for k, v in wanted.items())


def check_network_policies(objects, where):
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for role in ("api", "probe"):
        types = {t for p in policies if selects(p, role) for t in p["spec"].get("policyTypes", [])}
        check({"Ingress", "Egress"} <= types, f"{where}: the {role} pods must be under NetworkPolicies for both Ingress and Egress (default deny), have {types}")

    def allows(role, direction, peer_role, port):
        for p in policies:
            if not selects(p, role):
                continue
            for rule in p["spec"].get(direction, []):
                peers = rule.get("from" if direction == "ingress" else "to", [])
                ports = {q.get("port") for q in rule.get("ports", [])}
                if port in ports and any(peer.get("podSelector", {}).get("matchLabels") == LABELS[peer_role] for peer in peers):
                    return True
        return False

    check(allows("api", "ingress", "probe", 3000), f"{where}: the api must accept the probe pods on 3000")
    check(allows("probe", "egress", "api", 3000), f"{where}: the probe must reach the api on 3000")
    dns = any(selects(p, "probe") and any(53 in {q.get("port") for q in r.get("ports", [])} for r in p["spec"].get("egress", [])) for p in policies)
    check(dns, f"{where}: the probe must reach cluster DNS on 53")
    metrics = any(selects(p, "api") and any(
        9090 in {q.get("port") for q in r.get("ports", [])}
        and any(peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring" for peer in r.get("from", []))
        for r in p["spec"].get("ingress", [])) for p in policies)
    check(metrics, f"{where}: the api's admin port 9090 must be open to the monitoring namespace")


def check_config(pod_spec, container, where, objects):
    """A container run with --config: /config must hold a pulse.toml whose probes pass the policy."""
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    check("/config" in mounts, f"{where}: --config=/config/pulse.toml needs a /config mount")
    if "/config" not in mounts:
        return
    volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == mounts["/config"]["name"]), None)
    name = (volume or {}).get("configMap", {}).get("name")
    text = configmaps.get(name, {}).get("data", {}).get("pulse.toml")
    check(text is not None, f"{where}: /config must be a ConfigMap in the render holding pulse.toml")
    if text is None:
        return
    config = tomllib.loads(text)
    probes = config.get("probe", [])
    check(len(probes) >= 1, f"{where}: pulse.toml must define at least one [[probe]]")
    for probe in probes:
        pw = f"{where}: pulse.toml probe {probe.get('name')!r}"
        check(probe.get("component") == "/components/component.wasm", f"{pw}: component must be /components/component.wasm")
        check(probe.get("target") == "http://api:3000/healthcheck", f"{pw}: must target http://api:3000/healthcheck")
        check(probe.get("schedule") == "0 8 * * *", f"{pw}: must fire at 0 8 * * *")
        check(bool(probe.get("time_zone")), f"{pw}: must set its time zone explicitly")
        check("status == 200" in probe.get("conditions", []), f"{pw}: must say what healthy means, at least `status == 200` in its conditions")


def check_probe_deployment(objects, where, delivery):
    probe = one(objects, "Deployment", "probe", where)
    if not probe:
        return
    spec = probe["spec"]
    check(spec.get("replicas") == 1, f"{where}: probe must run exactly 1 replica")
    check(spec.get("strategy", {}).get("type") == "Recreate", f"{where}: probe must use the Recreate strategy")
    check_labels(spec["template"], f"{where} Deployment probe", "probe")
    pod = spec["template"]["spec"]
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    check_pod(pod, f"{where} Deployment probe", configmaps, delivery)
    c = pod["containers"][0]
    check(c["args"][:1] == ["schedule"], f"{where}: probe must run `pulse schedule`")
    check_probes(c, pod, f"{where} Deployment probe", "probe", prestop_required=False)
    check("--config=/config/pulse.toml" in c["args"], f"{where}: the probe must read its probes from /config/pulse.toml")
    check_config(pod, c, f"{where} Deployment probe", objects)
    state_dir = env(c, "PULSE_STATE_DIR") or flag(c["args"], "--state-dir")
    check(bool(state_dir), f"{where}: the probe must keep its schedule state (PULSE_STATE_DIR), so a restart neither loses nor repeats a firing")
    if state_dir:
        mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == state_dir), None)
        volume = mount and next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
        check(bool(volume) and "emptyDir" in volume and not mount.get("readOnly"),
              f"{where}: the probe's state dir {state_dir} must be a writable emptyDir mount (the root filesystem is read-only, and it must outlive container restarts)")


def check_redis(objects, where):
    """The redis overlay: the api reads a pulse.toml whose keyvalue store is
    on the Service `redis` with its password from the environment, which
    takes it from a Secret; Redis runs restricted and asks for the password;
    only the api reaches it."""
    check_api(objects, where, "image")
    api = one(objects, "Deployment", "api", where)
    redis = one(objects, "Deployment", "redis", where)
    service = one(objects, "Service", "redis", where)
    if not (api and redis and service):
        return
    pod = api["spec"]["template"]["spec"]
    c = pod["containers"][0]
    check("--config=/config/pulse.toml" in c["args"], f"{where}: the api must read /config/pulse.toml")
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == "/config"), None)
    volume = mount and next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
    text = configmaps.get((volume or {}).get("configMap", {}).get("name"), {}).get("data", {}).get("pulse.toml")
    check(text is not None, f"{where}: the api's /config must be a ConfigMap holding pulse.toml")
    if text is None:
        return
    config = tomllib.loads(text)
    store = config.get("keyvalue", {}).get("default", {})
    check(store.get("backend") == "redis" and store.get("url") == "redis://redis:6379",
          f"{where}: the api's store `default` must be redis at redis://redis:6379, is {store}")
    check("@" not in store.get("url", ""), f"{where}: the Redis url must hold no password")
    variable = store.get("password_env")
    secret = next((e for e in c.get("env", []) if e["name"] == variable), None)
    check(bool(secret) and "secretKeyRef" in secret.get("valueFrom", {}),
          f"{where}: the api's {variable} must come from a Secret")
    check("default" in config.get("handler", {}).get("keyvalue", []), f"{where}: the handler must list the store `default`")
    redis_pod = redis["spec"]["template"]["spec"]
    redis_container = redis_pod["containers"][0]
    check(redis_pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: redis must run as non-root")
    check(redis_container.get("securityContext", {}).get("readOnlyRootFilesystem") is True, f"{where}: redis needs a read-only root filesystem")
    check("--requirepass" in redis_container.get("args", []), f"{where}: redis must ask for the password")
    check(any(p["port"] == 6379 for p in service["spec"]["ports"]), f"{where}: Service redis must expose 6379")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    check(service["spec"]["selector"].items() <= redis_labels.items(), f"{where}: Service redis must select the redis pods")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    def selecting(labels):
        return [p for p in policies if p["spec"].get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()]
    api_labels = LABELS["api"]
    check(any(6379 in {q.get("port") for q in r.get("ports", [])}
              and any(peer.get("podSelector", {}).get("matchLabels", {}).items() <= redis_labels.items() for peer in r.get("to", []))
              for p in selecting(api_labels) for r in p["spec"].get("egress", [])),
          f"{where}: the api must reach redis on 6379")
    ingress = [r for p in selecting(redis_labels) for r in p["spec"].get("ingress", [])]
    check(bool(ingress) and all(
        all(peer.get("podSelector", {}).get("matchLabels") == api_labels for peer in r.get("from", [])) for r in ingress),
        f"{where}: only the api pods may reach redis")


# Every alert the monitoring overlays must ship, by layout.
ALERTS = {"PulseProbeFailed", "PulseProbeNoRecentSuccess", "PulseSchedulerStalled",
          "PulseComponentReloadRejected", "PulseApiErrorRatio", "PulseProbeCertExpiresSoon"}
CRONJOB_ALERTS = ALERTS | {"PulseProbeCronJobNoRecentSuccess"}


def check_monitoring(objects, where, alerts):
    """The PodMonitor scrapes the admin port of every pulse workload, and
    the PrometheusRules hold every alert with a summary and description."""
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    check(len(monitors) == 1, f"{where}: one PodMonitor expected, found {len(monitors)}")
    pods = []
    for o in objects:
        if o["kind"] == "Deployment":
            pods.append(o["spec"]["template"])
    for monitor in monitors:
        selector = monitor["spec"]["selector"].get("matchLabels", {})
        endpoints = monitor["spec"].get("podMetricsEndpoints", [])
        check(bool(endpoints) and all(e.get("path", "/metrics") == "/metrics" for e in endpoints),
              f"{where}: the PodMonitor must scrape /metrics")
        for pod in pods:
            labels = pod["metadata"].get("labels", {})
            name = f"{labels.get('app.kubernetes.io/component')} pods"
            check(all(labels.get(k) == v for k, v in selector.items()), f"{where}: the PodMonitor does not select the {name}")
            ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            check(all(e.get("port") in ports for e in endpoints), f"{where}: the PodMonitor's port is not a named port of the {name}")
    found = {}
    for rule_object in (o for o in objects if o["kind"] == "PrometheusRule"):
        for group in rule_object["spec"]["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found[rule["alert"]] = rule
    check(set(found) == alerts, f"{where}: alerts {sorted(found)} must be exactly {sorted(alerts)}")
    for name, rule in found.items():
        annotations = rule.get("annotations", {})
        check(annotations.get("summary") and annotations.get("description"), f"{where}: alert {name} needs a summary and a description")
        check(rule.get("labels", {}).get("severity") in ("critical", "warning"), f"{where}: alert {name} needs severity critical or warning")
        runbook = annotations.get("runbook_url", "")
        page, _, anchor = runbook.partition("#")
        check(page == "docs/runbook.md" and anchor in RUNBOOK_ANCHORS,
              f"{where}: alert {name} needs a runbook_url to its entry in docs/runbook.md (has {runbook!r})")


# The anchors of docs/runbook.md's entries, as GitHub-style renderers make them.
RUNBOOK_ANCHORS = {
    line[3:].strip().lower()
    for line in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "runbook.md"))
    if line.startswith("## ")
}


def main(base_path, cron_path, configmap_path, monitoring_path, cron_monitoring_path, redis_path):
    base = load(base_path)
    check_api(base, "base", "image")
    check_probe_deployment(base, "base", "image")

    cron = load(cron_path)
    check_api(cron, "cronjob overlay", "image")
    check(not [o for o in cron if o["kind"] == "Deployment" and o["metadata"]["name"] == "probe"], "cronjob overlay: the probe Deployment must be removed")
    job = one(cron, "CronJob", "probe", "cronjob overlay")
    if job:
        spec = job["spec"]
        check(spec.get("schedule") == "0 8 * * *", "cronjob overlay: schedule must be 0 8 * * *")
        check(bool(spec.get("timeZone")), "cronjob overlay: timeZone must be set")
        check(spec.get("concurrencyPolicy") == "Forbid", "cronjob overlay: concurrencyPolicy must be Forbid")
        check(isinstance(spec.get("startingDeadlineSeconds"), int), "cronjob overlay: startingDeadlineSeconds must be set")
        job_spec = spec["jobTemplate"]["spec"]
        check(0 < job_spec.get("backoffLimit", 6) <= 3, "cronjob overlay: backoffLimit must be small but allow a retry")
        rules = job_spec.get("podFailurePolicy", {}).get("rules", [])
        check(any(r.get("action") == "Ignore" and any(c.get("type") == "DisruptionTarget" for c in r.get("onPodConditions", [])) for r in rules),
              "cronjob overlay: a node drain must not fail the day's run (podFailurePolicy Ignore on DisruptionTarget)")
        check_labels(job_spec["template"], "cronjob overlay CronJob probe", "probe")
        pod = job_spec["template"]["spec"]
        check_pod(pod, "cronjob overlay CronJob probe", {}, "image")
        c = pod["containers"][0]
        check(c["args"][:1] == ["probe"], "cronjob overlay: the CronJob must run `pulse probe`")
        check("--config=/config/pulse.toml" in c["args"], "cronjob overlay: the CronJob must read the same pulse.toml as the Deployment")
        check_config(pod, c, "cronjob overlay CronJob probe", cron)

    configmap = load(configmap_path)
    check_api(configmap, "configmap overlay", "configmap")
    check_probe_deployment(configmap, "configmap overlay", "configmap")

    monitoring = load(monitoring_path)
    check_api(monitoring, "monitoring overlay", "image")
    check_probe_deployment(monitoring, "monitoring overlay", "image")
    check_monitoring(monitoring, "monitoring overlay", ALERTS)
    cron_monitoring = load(cron_monitoring_path)
    check_monitoring(cron_monitoring, "cronjob-monitoring overlay", CRONJOB_ALERTS)
    check_redis(load(redis_path), "redis overlay")

    if failures:
        print("k8s policy check failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"k8s policy check passed ({len(base)} objects in the base, {len(cron)} in the cronjob overlay, {len(configmap)} in the configmap overlay, {len(monitoring)} and {len(cron_monitoring)} in the monitoring overlays, and the redis overlay)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
