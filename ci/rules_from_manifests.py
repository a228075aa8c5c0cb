#!/usr/bin/env python3
"""Writes the spec of each PrometheusRule in the given manifests as a plain
Prometheus rules file, for promtool and for a real Prometheus.

Usage: rules_from_manifests.py OUT_DIR MANIFEST.yaml...
Writes OUT_DIR/<metadata.name>.rules.yaml per PrometheusRule; exits 1 if
there is none.
"""
import os
import sys

import yaml


def main():
    out_dir, manifests = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for manifest in manifests:
        with open(manifest) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "PrometheusRule":
                    continue
                path = os.path.join(out_dir, doc["metadata"]["name"] + ".rules.yaml")
                with open(path, "w") as out:
                    yaml.safe_dump(doc["spec"], out, sort_keys=False)
                written.append(path)
    if not written:
        sys.exit(f"no PrometheusRule in {' '.join(manifests)}")
    print("\n".join(written))


if __name__ == "__main__":
    main()
