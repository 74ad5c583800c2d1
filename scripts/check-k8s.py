#!/usr/bin/env python3
"""Cross-checks of rendered Kubernetes manifests that a schema cannot express.

Usage: check-k8s.py RENDERED.yaml [...]

Every Deployment must run non-root on a read-only root filesystem with resources, readiness and
liveness probes (native gRPC probes for the gRPC services), and give its pods enough
terminationGracePeriodSeconds for preStop plus the service's own drain (so a rolling restart
closes WebSockets with 1001 and loses nothing); every Deployment needs a PodDisruptionBudget;
only the gateway's Service may be reached from outside Tollgate's pods.
"""

import sys

import yaml

DEFAULT_GRACE_SECONDS = 10
GRPC_SERVICES = {"auth-service", "usage-service"}


def seconds(text):
    text = str(text)
    for suffix, factor in (("ms", 0.001), ("s", 1), ("m", 60)):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return int(text[: -len(suffix)]) * factor
    raise ValueError(f"not a duration: {text}")


def check_deployment(deployment, problems):
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append(f"{name}: pods must set runAsNonRoot")
    for container in pod["containers"]:
        where = f"{name}/{container['name']}"
        security = container.get("securityContext", {})
        if not security.get("readOnlyRootFilesystem"):
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        if security.get("allowPrivilegeEscalation", True):
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        resources = container.get("resources", {})
        if not resources.get("requests") or not resources.get("limits"):
            problems.append(f"{where}: resource requests and limits are required")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container:
                problems.append(f"{where}: {probe} is required")
            elif name in GRPC_SERVICES and "grpc" not in container[probe]:
                problems.append(f"{where}: {probe} must be a native gRPC probe")
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        grace_variable = {
            "auth-service": "AUTH_SHUTDOWN_GRACE",
            "usage-service": "USAGE_SHUTDOWN_GRACE",
            "ws-gateway": "GATEWAY_SHUTDOWN_GRACE",
        }.get(name)
        drain = seconds(env.get(grace_variable, f"{DEFAULT_GRACE_SECONDS}s"))
        pre_stop = (
            container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        )
        needed = pre_stop + drain + 5
        granted = pod.get("terminationGracePeriodSeconds", 30)
        if granted < needed:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {granted} < preStop {pre_stop} s"
                f" + drain {drain} s + 5 s"
            )


def main(paths):
    problems = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            documents = [d for d in yaml.safe_load_all(file) if d]
        deployments = [d for d in documents if d["kind"] == "Deployment"]
        budgets = {
            d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            for d in documents
            if d["kind"] == "PodDisruptionBudget"
        }
        for deployment in deployments:
            check_deployment(deployment, problems)
            if deployment["metadata"]["name"] not in budgets:
                problems.append(f"{deployment['metadata']['name']}: no PodDisruptionBudget")
        exposed = [
            d["metadata"]["name"]
            for d in documents
            if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")
        ]
        if any(name != "ws-gateway" for name in exposed):
            problems.append(f"only ws-gateway may be exposed, found {exposed}")
        if not any(d["kind"] == "NetworkPolicy" for d in documents):
            problems.append("no NetworkPolicy")
        print(f"check-k8s: {path}: {len(documents)} objects, {len(deployments)} Deployments")
    for problem in problems:
        print(f"check-k8s: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
