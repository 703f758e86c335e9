#!/usr/bin/env bash
# Validates the deployment files without a cluster:
#   1. yamllint on every YAML file under deploy/
#   2. docker-compose config (when docker-compose is installed)
#   3. kubectl kustomize renders deploy/k8s, deploy/k8s/eks and deploy/k8s/tls
#   4. checkov (Kubernetes framework) on both renderings: any failed check fails
#   5. deploy/k8s/check_manifests.py: the properties this deployment promises
#      (quorum-keeping PDB, probes on /health and /livez, non-root read-only containers,
#      anti-affinity, peer discovery consistent with replicas, ...)
#
#   deploy/validate.sh
#
# yamllint and checkov come from PyPI: if they are not on PATH a virtualenv
# is created under ${CARGO_TARGET_DIR:-target}/deploy-venv (pinned versions).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="${DEPLOY_VENV:-$TARGET_DIR/deploy-venv}"
if ! { command -v checkov && command -v yamllint && python3 -c 'import yaml'; } >/dev/null 2>&1; then
    if [ ! -x "$VENV/bin/checkov" ] || [ ! -x "$VENV/bin/yamllint" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "checkov==3.3.30" "yamllint==1.38.0"
    fi
    export PATH="$VENV/bin:$PATH"
fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

echo "== yamllint"
yamllint -s -c deploy/.yamllint deploy

if command -v docker-compose >/dev/null; then
    echo "== docker-compose config"
    docker-compose -f deploy/compose.yaml config -q
    docker-compose -f deploy/compose.yaml -f deploy/compose.tls.yaml config -q
fi

echo "== kubectl kustomize"
kubectl kustomize deploy/k8s >"$OUT/base.yaml"
kubectl kustomize deploy/k8s/eks >"$OUT/eks.yaml"
kubectl kustomize deploy/k8s/tls >"$OUT/tls.yaml"

echo "== checkov"
for f in base eks tls; do
    checkov --quiet --compact --skip-download --framework kubernetes -f "$OUT/$f.yaml" \
        --output cli >"$OUT/$f.checkov" 2>&1 || {
        cat "$OUT/$f.checkov"
        echo "validate: checkov failed on the $f rendering" >&2
        exit 1
    }
    grep -E 'Passed checks|Failed checks' "$OUT/$f.checkov" | sed "s/^/  $f: /"
done

echo "== manifest properties"
PY=python3
python3 -c 'import yaml' 2>/dev/null || PY="$VENV/bin/python3"
"$PY" deploy/k8s/check_manifests.py "$OUT/base.yaml" "$OUT/eks.yaml" "$OUT/tls.yaml"
echo "validate: OK"
