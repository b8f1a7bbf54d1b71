"""``depprune inspect``: the prunable groups of a model by kind and layer (config.json alone is enough)."""

from __future__ import annotations

import argparse
from collections import Counter

from .arguments import add_common_options, check_path_argument
from .registry import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    p.add_argument("--model", required=True, help="model directory (config.json alone is enough: traced on meta)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> dict:
    from depgraph.repeats import layer_stack

    from ..io.checkpoint import load_model
    from ..pipeline import analyze, count_params

    check_path_argument("--model", args.model)
    model = load_model(args.model, weights=False, trust_remote_code=args.trust_remote_code)
    tr, groups = analyze(model)
    report = {"model": str(args.model), "params": count_params(model), "groups": [g.summary() for g in groups]}
    stack = layer_stack(model)
    if stack is not None:  # repeated layers are exported once and replicated (depgraph.repeats)
        report["layers"] = {"stack": stack[0], "count": len(stack[1]), "exported": len(stack[1]) - len(tr.replicated)}
    return report


def show(report: dict) -> None:
    print(f"model: {report['model']}")
    print(f"parameters: {report['params']:,}")
    if "layers" in report:
        lay = report["layers"]
        print(f"decoder layers: {lay['count']} in {lay['stack']}, {lay['exported']} exported, "
              f"{lay['count'] - lay['exported']} replicated from them")
    print(f"{'group':<24}{'kind':<16}{'layer':>6}{'units':>8}{'params/unit':>13}{'params':>12}  masked=sliced")
    for g in report["groups"]:
        layer = "-" if g["layer"] is None else g["layer"]
        print(f"{g['id']:<24}{g['kind']:<16}{layer:>6}{g['units']:>8}{g['unit_params']:>13,}{g['params']:>12,}  {'yes' if g['mask_equivalent'] else 'no (a norm averages over these units)'}")
    kinds = Counter(g["kind"] for g in report["groups"])
    print("groups by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


COMMAND = Command("inspect", "list the prunable groups of a model by kind and layer", add_arguments, run, show)
