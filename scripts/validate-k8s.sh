#!/usr/bin/env bash
# Renders every kustomize tree under deploy/k8s (the base and each overlay) and validates the
# result offline against the Kubernetes JSON schemas of a pinned version, then runs the
# cross-checks of scripts/check-k8s.py. Needs kubectl (for `kubectl kustomize`) and a Python
# with kubernetes-validate and pyyaml: `validate-k8s.sh PYTHON`.
set -euo pipefail

python="${1:?usage: validate-k8s.sh PYTHON}"
kubernetes_version="1.31.0"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT

for tree in base overlays/dev overlays/prod; do
    out="$rendered/${tree//\//-}.yaml"
    kubectl kustomize "$repo/deploy/k8s/$tree" >"$out"
    "$python" -m kubernetes_validate --strict --quiet -k "$kubernetes_version" "$out"
    echo "validate-k8s: deploy/k8s/$tree: valid for Kubernetes $kubernetes_version"
    "$python" "$repo/scripts/check-k8s.py" "$out"
done
