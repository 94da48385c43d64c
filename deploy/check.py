#!/usr/bin/env python3
"""Checks the Kubernetes examples: every document parses as YAML, and every
`ckpt` option they use exists in the built binary's --help (so the examples
cannot drift from the CLI). Usage: deploy/check.py PATH_TO_CKPT"""
import glob
import re
import subprocess
import sys

import yaml

ckpt = sys.argv[1]
help_of = {}


def options_of(subcommand):
    if subcommand not in help_of:
        args = [ckpt] + ([subcommand] if subcommand else []) + ["--help"]
        text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        help_of[subcommand] = set(re.findall(r"(--[a-z][a-z-]*)", text))
    return help_of[subcommand]


def commands(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "command" and isinstance(value, list) and value and value[0] == "ckpt":
                yield value
            else:
                yield from commands(value)
    elif isinstance(node, list):
        for value in node:
            yield from commands(value)


failures = 0
for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    docs = list(yaml.safe_load_all(open(path)))
    found = 0
    for doc in docs:
        for cmd in commands(doc):
            found += 1
            words = [w for w in cmd[1:] if w != "--"]
            subcommand = next((w for w in words if not w.startswith("-")), "")
            known = options_of(subcommand) | options_of("")
            for word in cmd[1:]:
                if word == "--":
                    break
                if word.startswith("--"):
                    name = word.split("=", 1)[0]
                    if name not in known:
                        print(f"{path}: unknown option {name} for `ckpt {subcommand}`")
                        failures += 1
    print(f"{path}: {len(docs)} documents, {found} ckpt commands checked")
    if found == 0:
        print(f"{path}: no ckpt command found")
        failures += 1
sys.exit(1 if failures else 0)
