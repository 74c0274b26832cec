#!/usr/bin/env python3
"""Lint and render a Helm chart with the real Helm engine (PyPI helm-python-sdk, no helm binary).

Usage: chart.py CHART_DIR [VALUES_JSON]
Prints one JSON object: {"lint": <helm lint report>, "manifests": {template: rendered text}}.
Used by tests/tests/chart.rs; scripts/test.sh installs helm-python-sdk.
"""
import json
import sys

import helm_python


def main() -> None:
    chart_dir = sys.argv[1]
    values = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    lint = helm_python.lint(chart_dir, values, strict=True, namespace="genesis-system")
    chart = helm_python.Chart.load(chart_dir)
    manifests = chart.render(values, name="genesis-mesh", namespace="genesis-system", is_install=True)
    crds = {c["filename"]: c["data"] for c in chart.crds}
    json.dump({"lint": lint, "manifests": manifests, "crds": crds}, sys.stdout)


if __name__ == "__main__":
    main()
