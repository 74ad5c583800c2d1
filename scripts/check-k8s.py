#!/usr/bin/env python3
"""Cross-checks of rendered Kubernetes manifests that a schema cannot express.

Usage: check-k8s.py RENDERED.yaml [...]

Every Deployment must run non-root on a read-only root filesystem with resources, readiness and
liveness probes (native gRPC probes for the gRPC services), and give its pods enough
terminationGracePeriodSeconds for preStop plus the service's own drain (so a rolling restart
closes WebSockets with 1001 and loses nothing); every Deployment needs a PodDisruptionBudget;
only the gateway's Service may be reached from outside Tollgate's pods.

Least privilege: a container mounts only Secret keys it reads (each one named by a `*_FILE`
variable), no Secret is shared by two workloads, and each workload's NetworkPolicy egress allows
exactly the ports it needs (the internet-facing gateway never reaches PostgreSQL).
"""

import sys

import yaml

DEFAULT_GRACE_SECONDS = 10
GRPC_SERVICES = {"auth-service", "usage-service"}
# The TCP/UDP ports each workload may reach, and nothing more.
EXPECTED_EGRESS = {
    "ws-gateway": {53, 50051, 50052, 6379, 4317},
    "auth-service": {53, 5432, 6379, 4317},
    "usage-service": {53, 50051, 5432, 6379, 4317},
    "tollgate-migrate": {53, 5432},
}


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
        if name == "ws-gateway":
            # Readiness and metrics live on the internal listener, off the public port.
            if not env.get("GATEWAY_ADMIN_ADDR"):
                problems.append(f"{where}: GATEWAY_ADMIN_ADDR must be set")
            for probe in ("readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port != "admin":
                    problems.append(f"{where}: {probe} must use the admin port, not {port}")
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


def pod_of(workload):
    """The pod template's labels and spec of a Deployment or Job."""
    template = workload["spec"]["template"]
    return template["metadata"].get("labels", {}), template["spec"]


def secret_keys_mounted(container, pod, secrets):
    """(secret name, key, path) of every Secret key a container can read."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounted = []
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if not secret:
            continue
        name = secret["secretName"]
        items = secret.get("items")
        if items:
            pairs = [(item["key"], item["path"]) for item in items]
        else:
            pairs = [(key, key) for key in secrets.get(name, [])]
        for key, path in pairs:
            mounted.append((name, key, f"{mount['mountPath'].rstrip('/')}/{path}"))
    return mounted


def check_secrets(workloads, secrets, problems):
    users = {}
    for workload in workloads:
        name = workload["metadata"]["name"]
        _, pod = pod_of(workload)
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            read = {
                item.get("value")
                for item in container.get("env", [])
                if item["name"].endswith("_FILE")
            }
            for secret, key, path in secret_keys_mounted(container, pod, secrets):
                users.setdefault(secret, set()).add(name)
                if path not in read:
                    problems.append(f"{where}: mounts {secret}/{key}, which it never reads")
    for secret, workloads_using in users.items():
        if len(workloads_using) > 1 and secret not in shareable(workloads_using):
            problems.append(f"Secret {secret} is mounted by {sorted(workloads_using)}")


def shareable(workloads_using):
    # The migration Job runs each service's migrations with that service's database URL.
    if workloads_using <= {"auth-service", "tollgate-migrate"}:
        return {"auth-service-secrets"}
    if workloads_using <= {"usage-service", "tollgate-migrate"}:
        return {"usage-service-secrets"}
    return set()


def selects(selector, labels):
    if not selector:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def check_egress(workloads, policies, problems):
    for workload in workloads:
        name = workload["metadata"]["name"]
        labels, _ = pod_of(workload)
        expected = EXPECTED_EGRESS.get(name)
        if expected is None:
            problems.append(f"{name}: no expected egress is declared for it")
            continue
        allowed = set()
        for policy in policies:
            spec = policy["spec"]
            if "Egress" not in spec.get("policyTypes", []):
                continue
            if not selects(spec.get("podSelector"), labels):
                continue
            for rule in spec.get("egress", []):
                ports = rule.get("ports")
                if not ports:
                    problems.append(f"{policy['metadata']['name']}: an egress rule with no ports")
                    continue
                allowed.update(port["port"] for port in ports)
        if allowed != expected:
            problems.append(
                f"{name}: egress allows ports {sorted(allowed)}, expected {sorted(expected)}"
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
        workloads = [d for d in documents if d["kind"] in ("Deployment", "Job")]
        secrets = {
            d["metadata"]["name"]: list(d.get("data", {})) + list(d.get("stringData", {}))
            for d in documents
            if d["kind"] == "Secret"
        }
        check_secrets(workloads, secrets, problems)
        check_egress(
            workloads, [d for d in documents if d["kind"] == "NetworkPolicy"], problems
        )
        print(f"check-k8s: {path}: {len(documents)} objects, {len(deployments)} Deployments")
    for problem in problems:
        print(f"check-k8s: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
