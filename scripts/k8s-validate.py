#!/usr/bin/env python3
"""`make k8s-validate`: render every overlay with `kubectl kustomize`, validate the
result against the Kubernetes schemas (kubernetes-validate, strict), and check
what the project promises of each workload: probes, limits, a hardened pod, and
gRPC probe names that the services really register in grpc.health.v1."""

import pathlib
import re
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERLAYS = ["dev", "prod", "scale-out"]
# Custom resources of operators (Strimzi, CloudNativePG): no core schema to check against.
CRD_GROUPS = ("kafka.strimzi.io/", "postgresql.cnpg.io/", "cert-manager.io/", "keda.sh/",
              "monitoring.coreos.com/", "argoproj.io/")
WAVE = "argocd.argoproj.io/sync-wave"
# Overlays that assume the Prometheus operator (the monitoring component).
MONITORED = ("prod", "scale-out")


def proto_services():
    """snake_case service name → fully qualified name, from the .proto files."""
    found = {}
    for proto in ROOT.glob("proto/shop/**/*.proto"):
        text = proto.read_text()
        package = re.search(r"^package ([\w.]+);", text, re.M)
        for service in re.findall(r"^service (\w+)", text, re.M):
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", service).lower()
            found[snake] = f"{package.group(1)}.{service}"
    return found


def registered_health_names():
    """The names the services register in grpc.health.v1: each application.rs takes
    its SERVICE_NAME from the generated server module of its service."""
    names = {"", "liveness"}
    services = proto_services()
    for app in ROOT.glob("services/*/src/application.rs"):
        m = re.search(r"pub use shop_proto::\w+::(\w+)_server::SERVICE_NAME;", app.read_text())
        if m:
            names.add(services[m.group(1)])
    platform = (ROOT / "services/platform/src/health.rs").read_text()
    m = re.search(r'pub const LIVENESS: &str = "([^"]+)"', platform)
    assert m and m.group(1) == "liveness", "the liveness health name changed in health.rs"
    return names


def check_workload(doc, health_names, config, problems):
    kind, name = doc["kind"], doc["metadata"]["name"]
    where = f"{kind}/{name}"
    pod = doc["spec"]["template"]["spec"]
    pod_sc = pod.get("securityContext", {})
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile must be RuntimeDefault")
    drain = int(config.get("DRAIN_DELAY_MS", "0")) + int(config.get("SHUTDOWN_TIMEOUT_MS", "0"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace * 1000 <= drain:
        problems.append(f"{where}: terminationGracePeriodSeconds {grace} s does not cover the drain ({drain} ms)")
    for c in pod.get("initContainers", []) + pod["containers"]:
        cw = f"{where} container {c['name']}"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe not in c:
                problems.append(f"{cw}: no {probe}")
            grpc = c.get(probe, {}).get("grpc")
            if grpc is not None and grpc.get("service", "") not in health_names:
                problems.append(f"{cw}: {probe} asks grpc.health.v1 for {grpc.get('service')!r}, which no service registers")
        readiness = c.get("readinessProbe", {}).get("grpc")
        if readiness is not None and readiness.get("service") in ("", "liveness", None):
            problems.append(f"{cw}: readiness must ask for the service's own name, not the overall status")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    problems.append(f"{cw}: no {part}.{r}")
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem must be true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{cw}: capabilities must drop ALL")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{cw}: must run as non-root")


def check_mtls(doc, config, certificates, problems):
    """A workload that speaks mutual TLS mounts the secret of a Certificate naming it
    spiffe://shopmesh/<name> where TLS_*_FILE point, and its gRPC probes ask the
    plaintext HEALTH_PORT (the kubelet has no client certificate)."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    where = f"{kind}/{name}"
    pod = doc["spec"]["template"]["spec"]
    cert_file = config.get("TLS_CERT_FILE")
    if not cert_file:
        return
    tls_dir = cert_file.rsplit("/", 1)[0]
    for key in ("TLS_KEY_FILE", "TLS_CA_FILE"):
        if not config.get(key, "").startswith(tls_dir + "/"):
            problems.append(f"{where}: {key} is not beside TLS_CERT_FILE in {tls_dir}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        uses_config = any(src.get("configMapRef", {}).get("name") == "shopmesh-config"
                          for src in c.get("envFrom", []))
        if not uses_config:
            continue  # not a shopmesh process (the dev overlay's PostgreSQL, Kafka)
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == tls_dir]
        secret = volumes.get(mounts[0]["name"], {}).get("secret", {}).get("secretName") if mounts else None
        wanted = f"spiffe://shopmesh/{name}"
        issued = [cert for cert in certificates if cert["spec"].get("secretName") == secret]
        if not issued:
            problems.append(f"{where}: no Certificate's secret is mounted at {tls_dir}")
        elif wanted not in issued[0]["spec"].get("uris", []):
            problems.append(f"{where}: its certificate does not name {wanted}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        health = env.get("HEALTH_PORT")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            grpc = c.get(probe, {}).get("grpc")
            if grpc is not None and str(grpc.get("port")) != str(health):
                problems.append(f"{where}: {probe} asks the mutual-TLS port; it must ask HEALTH_PORT")


GRPC_BACKENDS = ("user-service", "inventory-service", "order-service")


def check_replicas(docs, overlay, problems):
    """Several copies, each reachable: a Deployment that an autoscaler (an HPA or a
    KEDA ScaledObject) owns sets no replica count of its own; every Deployment has
    exactly one autoscaler; the gRPC backends' Services are headless (callers
    balance over every pod); Redis, which the copies share, is there."""
    scaled = {}
    for d in docs:
        if d["kind"] == "HorizontalPodAutoscaler" or d["kind"] == "ScaledObject":
            target = d["spec"]["scaleTargetRef"]["name"]
            scaled[target] = scaled.get(target, 0) + 1
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] == "Deployment" and name in GRPC_BACKENDS + ("gateway",):
            if scaled.get(name) != 1:
                problems.append(f"{overlay}: Deployment/{name} has {scaled.get(name, 0)} autoscalers, not 1")
            if "replicas" in d["spec"]:
                problems.append(f"{overlay}: Deployment/{name} sets replicas, which its autoscaler owns")
        if d["kind"] == "Service" and name in GRPC_BACKENDS and d["spec"].get("clusterIP") != "None":
            problems.append(f"{overlay}: Service/{name} is not headless: callers would stick to one pod")
    if not any(d["kind"] == "Service" and d["metadata"]["name"] == "redis" for d in docs):
        problems.append(f"{overlay}: no Redis Service for the state the copies share")


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions In) picks `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        if e["operator"] != "In" or labels.get(e["key"]) not in e["values"]:
            return False
    return True


def check_monitoring(docs, overlay, problems):
    """What points at something must find it: each ServiceMonitor selects Services
    with the port it scrapes, every gRPC backend and the gateway is scraped, the
    PrometheusRule carries every rule of deploy/prometheus/rules.yml, and every
    autoscaler scales a Deployment that exists."""
    services = [d for d in docs if d["kind"] == "Service"]
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    scraped = set()
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        name = monitor["metadata"]["name"]
        chosen = [s for s in services if s["metadata"].get("namespace") == monitor["metadata"].get("namespace")
                  and selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not chosen:
            problems.append(f"{overlay}: ServiceMonitor/{name} selects no Service")
        for endpoint in monitor["spec"].get("endpoints", []):
            for svc in chosen:
                if endpoint["port"] not in [p.get("name") for p in svc["spec"]["ports"]]:
                    problems.append(f"{overlay}: ServiceMonitor/{name} scrapes port '{endpoint['port']}', "
                                    f"which Service/{svc['metadata']['name']} does not name")
                else:
                    scraped.add(svc["metadata"]["name"])
    if overlay in MONITORED:
        unscraped = sorted(set(GRPC_BACKENDS + ("gateway",)) - scraped)
        if unscraped:
            problems.append(f"{overlay}: no ServiceMonitor scrapes {unscraped}")
        rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())["groups"]
        want = sum(len(g["rules"]) for g in rules)
        for rule in (d for d in docs if d["kind"] == "PrometheusRule"):
            have = sum(len(g["rules"]) for g in rule["spec"].get("groups", []))
            if have != want:
                problems.append(f"{overlay}: PrometheusRule/{rule['metadata']['name']} has {have} rules, "
                                f"deploy/prometheus/rules.yml {want}")
        if not any(d["kind"] == "PrometheusRule" for d in docs):
            problems.append(f"{overlay}: no PrometheusRule")
    for d in docs:
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = d["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                problems.append(f"{overlay}: {d['kind']}/{d['metadata']['name']} scales Deployment/{target}, "
                                "which does not exist")


# Which service owns (alone may write) each events topic.
TOPIC_OWNERS = {"shop.user.v1.events": "user-service", "shop.inventory.v1.events": "inventory-service",
                "shop.order.v1.events": "order-service"}


def check_kafka_security(docs, overlay, problems):
    """Where the overlay runs its own Kafka (Strimzi): every listener speaks TLS
    and authenticates clients, ACLs are enforced, each service connects over TLS
    with the certificate of a KafkaUser of its own name, and only a topic's owner
    may write it."""
    clusters = [d for d in docs if d["kind"] == "Kafka"]
    if not clusters:
        return
    for kafka in clusters:
        for listener in kafka["spec"]["kafka"].get("listeners", []):
            if not listener.get("tls") or "authentication" not in listener:
                problems.append(f"{overlay}: Kafka listener {listener['name']} is not TLS with client authentication")
        if kafka["spec"]["kafka"].get("authorization", {}).get("type") != "simple":
            problems.append(f"{overlay}: Kafka/{kafka['metadata']['name']} enforces no ACLs")
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    config = next((d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"
                   and d["metadata"]["name"] == "shopmesh-config"), {})
    if config.get("KAFKA_SECURITY_PROTOCOL") != "ssl":
        problems.append(f"{overlay}: the services do not connect to Kafka over TLS (KAFKA_SECURITY_PROTOCOL)")
    for d in docs:
        if d["kind"] != "Deployment" or d["metadata"]["name"] not in GRPC_BACKENDS:
            continue
        name = d["metadata"]["name"]
        secrets = {v.get("secret", {}).get("secretName") for v in d["spec"]["template"]["spec"].get("volumes", [])}
        if name not in users or name not in secrets:
            problems.append(f"{overlay}: {name} does not connect as a KafkaUser of its own (none, or its Secret not mounted)")
    for user, doc in users.items():
        for acl in doc["spec"].get("authorization", {}).get("acls", []):
            topic = acl["resource"]["name"]
            if acl["resource"]["type"] == "topic" and "Write" in acl["operations"] \
                    and TOPIC_OWNERS.get(topic, user) != user:
                problems.append(f"{overlay}: KafkaUser/{user} may write {topic}, which {TOPIC_OWNERS[topic]} owns")


def check_images_and_waves(docs, overlay, problems):
    """Every image pinned to a version (not `latest`, not a bare major such as
    `postgres:15`); the overlay's own `images:` list sets every shopmesh tag; and
    Argo CD's waves put configuration and dependencies before the services."""
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/overlays" / overlay / "kustomization.yaml").read_text())
    listed = {i["name"] for i in kustomization.get("images", [])}
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            tag = c["image"].rpartition(":")[2] if ":" in c["image"] else ""
            if not re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?[-.\w]*", tag):
                problems.append(f"{overlay}: {d['kind']}/{d['metadata']['name']} runs {c['image']}: "
                                "pin a version (major.minor at least)")
            name = c["image"].rpartition(":")[0]
            if name.startswith("shopmesh/") and overlay in ("dev", "prod") and name not in listed:
                problems.append(f"{overlay}: {name} is not in the overlay's images: list")
    wave = lambda d: int((d["metadata"].get("annotations") or {}).get(WAVE, "0"))
    services = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] in GRPC_BACKENDS + ("gateway",)]
    before = [d for d in docs if d["kind"] in ("Namespace", "ConfigMap", "Secret", "Certificate", "KafkaTopic",
                                               "Cluster", "StatefulSet")
              or (d["kind"] == "Deployment" and d["metadata"]["name"] == "redis")]
    for d in before:
        if services and wave(d) >= min(wave(s) for s in services):
            problems.append(f"{overlay}: {d['kind']}/{d['metadata']['name']} is in sync wave {wave(d)}, "
                            "not before the services")


def check_argocd(rendered, problems):
    """The Applications follow overlays that exist and render, into the namespace
    those overlays use, under a project that allows it; dev syncs by itself, prod
    waits for a person; neither fights the autoscalers over replicas."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/argocd/shopmesh.yaml").read_text()) if d]
    projects = {d["metadata"]["name"]: d for d in docs if d["kind"] == "AppProject"}
    apps = [d for d in docs if d["kind"] == "Application"]
    if {a["metadata"]["name"] for a in apps} != {"shopmesh-dev", "shopmesh-prod"}:
        problems.append(f"argocd: Applications {[a['metadata']['name'] for a in apps]}, not shopmesh-dev and -prod")
    for app in apps:
        name, spec = app["metadata"]["name"], app["spec"]
        project = projects.get(spec["project"])
        overlay = spec["source"]["path"].removeprefix("deploy/k8s/overlays/")
        if project is None:
            problems.append(f"argocd: {name} names project {spec['project']}, which is not defined")
        elif spec["source"]["repoURL"] not in project["spec"]["sourceRepos"]:
            problems.append(f"argocd: {name}'s repository is not among its project's sourceRepos")
        elif not any(t.get("name") == spec["destination"].get("name") and t["namespace"] == spec["destination"]["namespace"]
                     for t in project["spec"]["destinations"]):
            problems.append(f"argocd: {name}'s destination is not among its project's destinations")
        if overlay not in rendered:
            problems.append(f"argocd: {name} follows {spec['source']['path']}, which is not a validated overlay")
            continue
        namespaces = {d["metadata"].get("namespace") for d in rendered[overlay] if d["metadata"].get("namespace")}
        if namespaces != {spec["destination"]["namespace"]}:
            problems.append(f"argocd: {name} deploys into {spec['destination']['namespace']}, the overlay into {namespaces}")
        automated = spec.get("syncPolicy", {}).get("automated")
        if overlay == "dev" and not (automated and automated.get("selfHeal") and automated.get("prune")):
            problems.append(f"argocd: {name} should sync by itself, prune and self-heal")
        if overlay != "dev" and automated is not None:
            problems.append(f"argocd: {name} syncs by itself: production is promoted by hand")
        if not any(i.get("kind") == "Deployment" and "/spec/replicas" in i.get("jsonPointers", [])
                   for i in spec.get("ignoreDifferences", [])):
            problems.append(f"argocd: {name} would undo the autoscalers' replica counts")


def self_test(health_names):
    """The checks must catch what they are for: a bare workload fails each of them."""
    bare = {
        "kind": "Deployment",
        "metadata": {"name": "bare"},
        "spec": {"template": {"spec": {"containers": [{
            "name": "c",
            "readinessProbe": {"grpc": {"port": 1, "service": "shop.nothing.v1.Nope"}},
        }]}}},
    }
    found = []
    check_workload(bare, health_names, {"DRAIN_DELAY_MS": "40000"}, found)
    expected = ["automountServiceAccountToken", "seccompProfile", "terminationGracePeriodSeconds",
                "no livenessProbe", "no startupProbe", "which no service registers", "no limits.memory",
                "allowPrivilegeEscalation", "readOnlyRootFilesystem", "drop ALL", "non-root"]
    missed = [e for e in expected if not any(e in f for f in found)]
    assert not missed, f"the checks missed: {missed}"
    found = []
    check_replicas([
        {"kind": "Deployment", "metadata": {"name": "gateway"}, "spec": {"replicas": 2}},
        {"kind": "Service", "metadata": {"name": "user-service"}, "spec": {}},
    ], "bare", found)
    expected = ["0 autoscalers", "sets replicas", "not headless", "no Redis"]
    missed = [e for e in expected if not any(e in f for f in found)]
    assert not missed, f"the replica checks missed: {missed}"
    found = []
    check_monitoring([
        {"kind": "Service", "metadata": {"name": "gateway", "namespace": "n", "labels": {"app": "gateway"}},
         "spec": {"ports": [{"name": "http"}]}},
        {"kind": "ServiceMonitor", "metadata": {"name": "lost", "namespace": "n"},
         "spec": {"selector": {"matchLabels": {"app": "nothing"}}, "endpoints": [{"port": "http"}]}},
        {"kind": "ServiceMonitor", "metadata": {"name": "wrong-port", "namespace": "n"},
         "spec": {"selector": {"matchLabels": {"app": "gateway"}}, "endpoints": [{"port": "metrics"}]}},
        {"kind": "ScaledObject", "metadata": {"name": "orphan"}, "spec": {"scaleTargetRef": {"name": "gone"}}},
    ], "prod", found)
    expected = ["selects no Service", "does not name", "no ServiceMonitor scrapes", "no PrometheusRule",
                "which does not exist"]
    missed = [e for e in expected if not any(e in f for f in found)]
    assert not missed, f"the monitoring checks missed: {missed}"
    found = []
    pod = lambda image: {"spec": {"template": {"spec": {"containers": [{"image": image}]}}}}
    check_images_and_waves([
        {"kind": "Deployment", "metadata": {"name": "db"}, **pod("postgres:15")},
        {"kind": "Deployment", "metadata": {"name": "cache"}, **pod("redis:latest")},
        {"kind": "Deployment", "metadata": {"name": "gateway"}, **pod("shopmesh/gateway:0.1.0")},
        {"kind": "Secret", "metadata": {"name": "keys", "annotations": {WAVE: "1"}}},
    ], "dev", found)
    expected = ["postgres:15: pin", "redis:latest: pin", "Secret/keys is in sync wave 1"]
    missed = [e for e in expected if not any(e in f for f in found)]
    assert not missed, f"the image and wave checks missed: {missed}"
    found = []
    check_kafka_security([
        {"kind": "Kafka", "metadata": {"name": "k"},
         "spec": {"kafka": {"listeners": [{"name": "plain", "tls": False}]}}},
        {"kind": "KafkaUser", "metadata": {"name": "user-service"},
         "spec": {"authorization": {"acls": [{"resource": {"type": "topic", "name": "shop.order.v1.events"},
                                              "operations": ["Write"]}]}}},
        {"kind": "Deployment", "metadata": {"name": "order-service"},
         "spec": {"template": {"spec": {"volumes": []}}}},
    ], "bare", found)
    expected = ["not TLS with client authentication", "enforces no ACLs", "KAFKA_SECURITY_PROTOCOL",
                "order-service does not connect as a KafkaUser", "may write shop.order.v1.events"]
    missed = [e for e in expected if not any(e in f for f in found)]
    assert not missed, f"the Kafka security checks missed: {missed}"


def main():
    health_names = registered_health_names()
    self_test(health_names)
    problems, counts, rendered_overlays = [], {}, {}
    for overlay in OVERLAYS:
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)],
            check=True, capture_output=True, text=True,
        ).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        config = next((d.get("data", {}) for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "shopmesh-config"), {})
        validated = custom = 0
        certificates = [d for d in docs if d["kind"] == "Certificate"]
        for doc in docs:
            if doc["apiVersion"].startswith(CRD_GROUPS):
                custom += 1
                if not doc.get("spec"):
                    problems.append(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} has no spec")
                continue
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
                validated += 1
            except Exception as err:  # the library raises several error types
                problems.append(f"{overlay}: {doc['kind']}/{doc['metadata'].get('name')}: {err}")
            if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
                check_workload(doc, health_names, config, problems)
                check_mtls(doc, config, certificates, problems)
        check_replicas(docs, overlay, problems)
        check_monitoring(docs, overlay, problems)
        check_images_and_waves(docs, overlay, problems)
        check_kafka_security(docs, overlay, problems)
        rendered_overlays[overlay] = docs
        for ingress in (d for d in docs if d["kind"] == "Ingress"):
            paths = [p["path"] for r in ingress["spec"].get("rules", []) for p in r.get("http", {}).get("paths", [])]
            exposed = [p for p in paths if not p.startswith("/v1/") and p not in ("/docs", "/openapi.json")]
            if exposed:
                problems.append(f"{overlay}: Ingress/{ingress['metadata']['name']} exposes {exposed}: only /v1/ is public")
            if overlay != "dev" and not ingress["spec"].get("tls"):
                problems.append(f"{overlay}: Ingress/{ingress['metadata']['name']} has no TLS section")
        counts[overlay] = (len(docs), validated, custom)
    check_argocd(rendered_overlays, problems)
    for overlay, (total, validated, custom) in counts.items():
        print(f"{overlay}: {total} resources rendered, {validated} valid against the Kubernetes schemas, {custom} custom resources")
    if problems:
        print("\n".join(["problems:"] + [f"  - {p}" for p in problems]))
        return 1
    print(f"every workload has probes, limits and a hardened pod, mounts a certificate naming it and probes "
          f"the health-only port; gRPC probes ask for {sorted(health_names - {''})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
