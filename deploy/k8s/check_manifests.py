#!/usr/bin/env python3
"""Checks the rendered manifests for the properties the deployment promises.

Usage: check_manifests.py RENDERED.yaml...   (output of kubectl kustomize)
Exits 1 listing every violated property. Needs PyYAML.
"""
import re
import sys

import yaml


def check(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    errs = []

    def need(cond, msg):
        if not cond:
            errs.append(f"{path}: {msg}")

    sts_list = by_kind.get("StatefulSet", [])
    need(len(sts_list) == 1, "exactly one StatefulSet")
    if not sts_list:
        return errs
    sts = sts_list[0]
    spec = sts["spec"]
    replicas = spec.get("replicas", 1)
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    need(spec.get("podManagementPolicy") == "Parallel",
         "podManagementPolicy Parallel (members must start together to elect a leader)")

    svcs = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = svcs.get(spec.get("serviceName"))
    need(headless is not None, f"serviceName {spec.get('serviceName')} names a Service")
    if headless:
        hs = headless["spec"]
        need(hs.get("clusterIP") == "None", "peer Service is headless")
        need(hs.get("publishNotReadyAddresses") is True,
             "headless Service publishes not-ready pods (peers find each other before a leader exists)")
        need(hs.get("selector", {}).items() <= labels.items(), "headless Service selects the pods")
    clients = [s for n, s in svcs.items() if s is not headless]
    need(any(any(p["port"] == 2379 for p in s["spec"]["ports"]) for s in clients),
         "a client Service on port 2379")

    pdbs = by_kind.get("PodDisruptionBudget", [])
    need(len(pdbs) == 1, "one PodDisruptionBudget")
    for p in pdbs:
        quorum = replicas // 2 + 1
        mu = p["spec"].get("maxUnavailable")
        mina = p["spec"].get("minAvailable")
        ok = (isinstance(mu, int) and replicas - mu >= quorum) or (
            isinstance(mina, int) and mina >= quorum)
        need(ok, f"PDB keeps a quorum of {quorum} of {replicas}")
        need(p["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selects the pods")

    psc = pod.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    need(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, "pod runAsUser numeric non-zero")
    need(psc.get("fsGroup") is not None, "pod fsGroup (volume writable by the user)")
    need(pod.get("automountServiceAccountToken") is False, "no service account token")
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    need(any(t.get("topologyKey") == "kubernetes.io/hostname" for t in terms),
         "required pod anti-affinity across nodes")

    cs = pod["containers"]
    need(len(cs) == 1, "one container")
    c = cs[0]
    sc = c.get("securityContext", {})
    need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL capabilities")
    # Readiness needs a leader and a linearizable read; liveness must not
    # depend on quorum (or losing quorum would restart every member).
    for probe, want_path in (("readinessProbe", "/health"), ("livenessProbe", "/livez")):
        hg = c.get(probe, {}).get("httpGet", {})
        need(hg.get("path") == want_path, f"{probe} httpGet {want_path}")
        # The kubelet's probes speak plain HTTP: they must use a port whose
        # URL is http (the client port, or the metrics port under TLS).
        port_name = hg.get("port")
        port = next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == port_name), None)
        listen = ",".join(
            e.get("value", "") for e in c.get("env", [])
            if e["name"] in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_LISTEN_METRICS_URLS"))
        need(port is not None and f"http://0.0.0.0:{port}" in listen.split(","),
             f"{probe} uses a port served over plain http (port {port_name!r})")
    res = c.get("resources", {})
    for k in ("cpu", "memory"):
        need(k in res.get("requests", {}), f"requests.{k}")
        need(k in res.get("limits", {}), f"limits.{k}")
    need(":" in c.get("image", "") and not c["image"].endswith(":latest"), "image with a fixed tag")

    env = {e["name"]: e for e in c.get("env", [])}
    # The kubelet expands $(VAR) only for variables defined earlier in the
    # list (an overlay's patch can reorder it).
    seen = set()
    for e in c.get("env", []):
        for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
            need(ref in seen, f"env {e['name']} uses $({ref}) before it is defined")
        seen.add(e["name"])
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vcts = {v["metadata"]["name"] for v in spec.get("volumeClaimTemplates", [])}
    data_dir = env.get("ETCD_DATA_DIR", {}).get("value")
    need(data_dir is not None and any(
        mounts.get(v) and (data_dir == mounts[v] or data_dir.startswith(mounts[v] + "/")) for v in vcts),
        "ETCD_DATA_DIR lies on a PersistentVolumeClaim")
    need(env.get("ETCD_NAME", {}).get("value") == "$(POD_NAME)", "member name is the pod name")
    ic = env.get("ETCD_INITIAL_CLUSTER", {}).get("value", "")
    name = sts["metadata"]["name"]
    svc = spec.get("serviceName")
    scheme = "https" if env.get("ETCD_LISTEN_PEER_URLS", {}).get("value", "").startswith("https://") else "http"
    want = ",".join(f"{name}-{i}={scheme}://{name}-{i}.{svc}:2380" for i in range(replicas))
    need(ic == want, f"ETCD_INITIAL_CLUSTER lists every pod by stable DNS name: want {want}, got {ic}")
    need(env.get("ETCD_INITIAL_ADVERTISE_PEER_URLS", {}).get("value") == f"{scheme}://$(POD_NAME).{svc}:2380",
         "advertised peer URL is the pod's stable DNS name")
    names = [e["name"] for e in c.get("env", [])]
    need("POD_NAME" in names and names.index("POD_NAME") < names.index("ETCD_NAME"),
         "POD_NAME defined before it is referenced")
    return errs


def main():
    errs = []
    for p in sys.argv[1:]:
        errs += check(p)
    for e in errs:
        print("FAIL", e)
    if errs:
        sys.exit(1)
    print(f"manifest properties OK ({', '.join(sys.argv[1:])})")


if __name__ == "__main__":
    main()
