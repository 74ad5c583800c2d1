#!/usr/bin/env python3
"""Validate a Compose file offline.

    python scripts/validate-compose.py [docker-compose.yml]

Checks, in order:

1. The YAML parses, with no key given twice in one mapping (PyYAML would silently keep the
   last one; `<<` merges of anchors are fine).
2. `${VAR}` interpolation as Compose does it, using only the defaults written in the file
   (`${VAR:-default}`, `${VAR-default}`), so the file must be valid with no variable set:
   `docker compose up` works out of the box. A variable with no default becomes "" and is
   reported.
3. The result validates against the Compose Specification JSON schema (draft-07).
4. Cross-checks the schema cannot express: `depends_on` names existing services, a
   `service_healthy` dependency has a healthcheck, a service outside any profile depends on
   no profiled service, named volumes/secrets/configs are declared, every `build.target` is a
   stage of its Dockerfile, relative bind-mount sources and secret/config files exist (and
   parse, when they are YAML), and no host port is published twice.

The schema is read from $COMPOSE_SCHEMA if set; otherwise from
<repo>/../shared/schemas/compose-spec.json, falling back to the copy committed beside this
script, scripts/compose-spec.json:
    Compose Specification JSON schema, compose-spec/compose-spec, schema/compose-spec.json,
    Apache License 2.0.

Exit status: 0 valid, 1 invalid, 2 usage or environment error.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

try:
    import jsonschema
    import yaml
except ImportError as error:  # pragma: no cover - environment problem
    print(f"validate-compose: missing Python package ({error}); pip install jsonschema pyyaml", file=sys.stderr)
    sys.exit(2)

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent
DEFAULT_SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "compose-spec.json"
# Bundled fallback: Compose Specification JSON schema, compose-spec/compose-spec,
# schema/compose-spec.json (commit 170098b), Apache License 2.0.
BUNDLED_SCHEMA = SCRIPT_DIR / "compose-spec.json"


class Problems:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


# --- 1. YAML without duplicate keys -------------------------------------------------------

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            first = seen[key].start_mark
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (first at line {first.line + 1})", key_node.start_mark,
            )
        seen[key] = key_node
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# --- 2. interpolation ---------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


def interpolate(value: Any, where: str, problems: Problems) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, f"{where}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("invalid") is not None:
            problems.error(f"{where}: invalid interpolation near {value[match.start():match.start() + 10]!r} (write $$ for a literal $)")
            return ""
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        # Every variable is treated as unset: the file must work with nothing in the environment.
        if op in (":-", "-"):
            return interpolate(arg, where, problems)
        if op in (":?", "?"):
            problems.warn(f"{where}: ${{{name}}} is required ({arg or 'no message'}); validated with a placeholder")
            return f"required-{name}"
        if op in (":+", "+"):
            return ""
        problems.warn(f"{where}: ${{{name}}} has no default and becomes an empty string when unset")
        return ""

    return _VARIABLE.sub(substitute, value)


# --- 3. schema ----------------------------------------------------------------------------

def load_schema() -> tuple[dict, Path]:
    explicit = os.environ.get("COMPOSE_SCHEMA")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            print(f"validate-compose: COMPOSE_SCHEMA={explicit} is not a file", file=sys.stderr)
            sys.exit(2)
    elif DEFAULT_SCHEMA.is_file():
        path = DEFAULT_SCHEMA
    elif BUNDLED_SCHEMA.is_file():
        print(f"validate-compose: {DEFAULT_SCHEMA} not found; using the bundled copy {BUNDLED_SCHEMA}")
        path = BUNDLED_SCHEMA
    else:
        print(f"validate-compose: no schema at {DEFAULT_SCHEMA} nor {BUNDLED_SCHEMA}", file=sys.stderr)
        sys.exit(2)
    with path.open(encoding="utf-8") as handle:
        return json.load(handle), path


def _path(error: jsonschema.ValidationError) -> str:
    return "/".join(str(part) for part in error.absolute_path) or "(top level)"


def validate_schema(document: dict, schema: dict, problems: Problems) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        # A oneOf failure says little by itself; its closest sub-error says what is wrong.
        best = jsonschema.exceptions.best_match([error]) if error.context else error
        problems.error(f"schema: {_path(best)}: {best.message}")


# --- 4. cross-checks ----------------------------------------------------------------------

def _names(value: Any) -> list[str]:
    """Keys of a mapping, or the entries of a list (of strings or of {source: …} objects)."""
    if isinstance(value, dict):
        return list(value)
    if isinstance(value, list):
        return [item if isinstance(item, str) else item.get("source", "") for item in value]
    return []


def dockerfile_stages(path: Path) -> set[str]:
    stages = set()
    pattern = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*\S+\s+AS\s+(\S+)\s*$", re.IGNORECASE)
    for line in path.read_text(encoding="utf-8").splitlines():
        match = pattern.match(line)
        if match:
            stages.add(match.group(1).lower())
    return stages


def _check_local_file(base: Path, source: str, where: str, problems: Problems) -> None:
    path = (base / source).resolve()
    if not path.exists():
        problems.error(f"{where}: {source} does not exist")
        return
    if path.is_file() and path.suffix in (".yml", ".yaml"):
        try:
            with path.open(encoding="utf-8") as handle:
                yaml.load(handle, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
        except yaml.YAMLError as error:
            problems.error(f"{where}: {source} is not valid YAML: {error}")


def _published_ports(entry: Any) -> list[tuple[str, str, str]]:
    """(host ip, host port, protocol) of one `ports` entry; [] when nothing is published."""
    if isinstance(entry, dict):
        published = entry.get("published")
        if published in (None, ""):
            return []
        return [(str(entry.get("host_ip", "0.0.0.0")), str(published), entry.get("protocol", "tcp"))]
    text = str(entry)
    text, _, protocol = text.partition("/")
    parts = text.rsplit(":", 2)
    if len(parts) == 1:
        return []  # container port only: Docker picks an ephemeral host port
    host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
    return [(host_ip.strip("[]"), parts[-2], protocol or "tcp")]


def cross_check(document: dict, base: Path, problems: Problems) -> None:
    services: dict = document.get("services") or {}
    declared = {kind: set(document.get(kind) or {}) for kind in ("volumes", "secrets", "configs", "networks")}
    published: dict[tuple[str, str, str], str] = {}

    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        where = f"services.{name}"
        profiles = service.get("profiles") or []

        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {dependency: {} for dependency in depends_on}
        for dependency, options in depends_on.items():
            target = services.get(dependency)
            if target is None:
                problems.error(f"{where}.depends_on: no service named {dependency!r}")
                continue
            if options.get("condition") == "service_healthy" and not (target.get("healthcheck") or {}).get("test"):
                problems.error(f"{where}.depends_on.{dependency}: service_healthy, but {dependency} has no healthcheck")
            if not profiles and target.get("profiles") and options.get("required", True):
                problems.error(f"{where}.depends_on.{dependency}: {dependency} only runs in profiles "
                               f"{target['profiles']}, so a plain `docker compose up` would fail")

        build = service.get("build")
        if isinstance(build, (str, dict)):
            context = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not dockerfile.is_file():
                problems.error(f"{where}.build: {dockerfile.relative_to(base) if dockerfile.is_relative_to(base) else dockerfile} does not exist")
            elif isinstance(build, dict) and build.get("target"):
                if build["target"].lower() not in dockerfile_stages(dockerfile):
                    problems.error(f"{where}.build.target: no stage {build['target']!r} in {dockerfile.name}")

        for index, volume in enumerate(service.get("volumes") or []):
            if isinstance(volume, str):
                source = volume.split(":", 1)[0] if ":" in volume else ""
                kind = "bind" if source.startswith((".", "/", "~")) else ("volume" if source else "anonymous")
            else:
                source, kind = volume.get("source", ""), volume.get("type", "volume")
            if kind == "volume" and source and source not in declared["volumes"]:
                problems.error(f"{where}.volumes[{index}]: named volume {source!r} is not declared under top-level volumes")
            if kind == "bind" and source.startswith("."):
                _check_local_file(base, source, f"{where}.volumes[{index}]", problems)

        for kind in ("secrets", "configs"):
            for reference in _names(service.get(kind)):
                if reference not in declared[kind]:
                    problems.error(f"{where}.{kind}: {reference!r} is not declared under top-level {kind}")
        for network in _names(service.get("networks")):
            if network not in declared["networks"] and network != "default":
                problems.error(f"{where}.networks: {network!r} is not declared under top-level networks")

        for entry in service.get("ports") or []:
            for key in _published_ports(entry):
                if "-" in key[1]:
                    continue  # port ranges: not checked
                other = published.get(key)
                if other is not None:
                    problems.error(f"{where}.ports: host port {key[0]}:{key[1]}/{key[2]} is also published by {other}")
                published[key] = name

    for kind in ("secrets", "configs"):
        for name, definition in (document.get(kind) or {}).items():
            if isinstance(definition, dict) and definition.get("file"):
                _check_local_file(base, definition["file"], f"{kind}.{name}.file", problems)


# --- main ---------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__)
        return 2 if len(argv) > 2 else 0
    compose_path = Path(argv[1] if len(argv) == 2 else "docker-compose.yml")
    if not compose_path.is_file():
        print(f"validate-compose: no such file: {compose_path}", file=sys.stderr)
        return 2

    schema, schema_path = load_schema()
    problems = Problems()
    try:
        with compose_path.open(encoding="utf-8") as handle:
            raw = yaml.load(handle, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as error:
        print(f"validate-compose: {compose_path}: invalid YAML: {error}", file=sys.stderr)
        return 1
    if not isinstance(raw, dict):
        print(f"validate-compose: {compose_path}: the top level must be a mapping", file=sys.stderr)
        return 1

    document = interpolate(raw, "", problems)
    validate_schema(document, schema, problems)
    if not problems.errors:
        cross_check(document, compose_path.resolve().parent, problems)

    for warning in problems.warnings:
        print(f"validate-compose: warning: {warning.lstrip('.')}")
    for error in problems.errors:
        print(f"validate-compose: error: {error.lstrip('.')}", file=sys.stderr)
    if problems.errors:
        print(f"validate-compose: {compose_path}: {len(problems.errors)} problem(s)", file=sys.stderr)
        return 1
    services = document.get("services") or {}
    print(f"validate-compose: {compose_path}: valid against {schema_path.name} "
          f"({schema_path}); {len(services)} services: {', '.join(services)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
