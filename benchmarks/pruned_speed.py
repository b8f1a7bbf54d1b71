"""The pruned model's speed: prefill latency, decode tokens/s and peak memory, dense against pruned.

A Llama of TinyLlama-1.1B's shape (22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads,
vocabulary 32,000) with random weights (seed 0) is pruned by 20% and 50% of its parameters
(L2 magnitude, KV groups + MLP channels) in two ways:

- **per-layer**: ``strategy="global"``, every layer its own sizes (written with generated
  modeling code, opened with ``trust_remote_code``);
- **aligned**: ``align=64``, every layer the same shape, channels multiples of 64, a plain config.

Each model is then measured **in its own process** (so that one model's memory does not show in
the next one's peak): prefill of one 512-token prompt (median of ``--repeats`` after a warm-up),
greedy decoding of 128 new tokens after a 16-token prompt at batch 1 and batch 8 (KV cache on;
tokens/s counts every sequence's tokens), and the process's peak RSS (VmHWM, imports included) or,
on a GPU, CUDA's peak allocated memory.

    python benchmarks/pruned_speed.py                                  # CPU, fp32 (about 15 minutes on 2 cores)
    python benchmarks/pruned_speed.py --device cuda --dtype bfloat16   # on a GPU, labelled with the device
    python benchmarks/pruned_speed.py --report

Results: ``benchmarks/results/pruned_speed.json`` (rows of other devices are kept) and ``pruned_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 32000,
         "max_position_embeddings": 2048, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
VARIANTS = {  # name -> PruneConfig fields besides the ratio (KV groups and MLP channels, the default kinds)
    "per-layer": {"importance": "l2", "strategy": "global"},
    "aligned": {"importance": "l2", "align": 64},
}
PREFILL, PROMPT, DECODE, BATCHES = 512, 16, 128, (1, 8)


def build(directory: Path) -> int:
    """The dense model: random weights at the real shape, saved once; its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPE)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def prune_all(dense: Path, work: Path, ratios: list[float]) -> dict[str, dict]:
    """Every variant at every ratio, saved beside ``dense``; name -> what was pruned."""
    from pruners import PruneConfig, count_params, load_model, prune, save_pruned

    model = load_model(dense)
    made = {}
    for ratio in ratios:
        for variant, settings in VARIANTS.items():
            name = f"{ratio:.0%} {variant}"
            print(f"pruning: {name}", flush=True)
            start = time.perf_counter()
            result = prune(model, PruneConfig(ratio=ratio, **settings), progress=False)
            out = work / name.replace("%", "").replace(" ", "-")
            save_pruned(result.model, out, result.record, source=dense)
            mlp = sorted({m.out_features for n, m in result.model.named_modules() if n.endswith("gate_proj")})
            kv = sorted({m.out_features // SHAPE["head_dim"] for n, m in result.model.named_modules() if n.endswith("k_proj")})
            made[name] = {"dir": str(out), "ratio": ratio, "variant": variant, "params": count_params(result.model),
                          "prune_seconds": time.perf_counter() - start,
                          "mlp_widths": [mlp[0], mlp[-1]], "kv_heads": [kv[0], kv[-1]]}
            del result
    return made


def measure(directory: str, device: str, dtype: str, repeats: int) -> dict:
    """Run in a fresh process: prefill, decode at each batch size, and peak memory of one model."""
    import torch

    from pruners import count_params, load_model

    model = load_model(directory, device, dtype=dtype, trust_remote_code=True)
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def timed(fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    out = {"params": count_params(model), "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    with torch.no_grad():
        ids = torch.randint(3, vocab, (1, PREFILL), generator=gen).to(dev)  # (1, 512)
        times = sorted(timed(lambda: model(ids)) for _ in range(repeats + 1))[: repeats]  # the warm-up is the slowest
        out["prefill_ms"] = 1000 * times[len(times) // 2]
        for batch in BATCHES:
            prompt = torch.randint(3, vocab, (batch, PROMPT), generator=gen).to(dev)  # (B, 16)
            kwargs = dict(max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, pad_token_id=0)
            model.generate(prompt[:, :4], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
            seconds = timed(lambda p=prompt, kw=kwargs: model.generate(p, **kw))
            out[f"decode_tok_s_b{batch}"] = batch * DECODE / seconds
    if dev.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    else:
        from torch_pruning_worker import peak_rss  # the benchmarks' one VmHWM reader

        out["peak_gb"] = peak_rss()
    return out


def device_label(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os

    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def run(args) -> None:
    import torch

    path = RESULTS / "pruned_speed.json"
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    label = device_label(args.device)
    rows = [r for r in data["rows"] if not (r["device"] == label and r["dtype"] == args.dtype)]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        print("building the dense model", flush=True)
        build(work / "dense")
        made = {"dense": {"dir": str(work / "dense"), "ratio": 0.0, "variant": "dense"}}
        made.update(prune_all(work / "dense", work, args.ratios))
        for name, info in made.items():
            print(f"measuring: {name}", flush=True)
            cmd = [sys.executable, __file__, "--measure", info["dir"], "--device", args.device, "--dtype", args.dtype,
                   "--repeats", str(args.repeats)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            rows.append({"model": name, "device": label, "dtype": args.dtype, "threads": torch.get_num_threads(),
                         **{k: v for k, v in info.items() if k != "dir"}, **result})
            print(json.dumps(rows[-1]), flush=True)
    data["rows"] = rows
    data.setdefault("runs", {})[f"{label} {args.dtype}"] = (
        f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, torch {torch.__version__}")
    path.write_text(json.dumps(data, indent=1) + "\n")
    report(data)


def report(data: dict) -> None:
    lines = ["# The pruned model's speed", "",
             "From `python benchmarks/pruned_speed.py` (every row in [pruned_speed.json](pruned_speed.json)). "
             "A Llama of TinyLlama-1.1B's shape with random weights, pruned with L2 magnitude (KV groups + MLP "
             "channels); per-layer: `strategy=global`, aligned: `align=64` (KV groups: 1, 2 or 4 of 4, the head "
             "counts the config accepts). Each model measured in its own process. "
             f"Prefill: one {PREFILL}-token prompt (median after a warm-up); decode: {DECODE} new tokens after a "
             f"{PROMPT}-token prompt, greedy, KV cache; tokens/s counts all sequences of the batch. Peak: the process's "
             "VmHWM (imports included) on CPU, CUDA's peak allocated memory on a GPU. Speed-up: against the dense "
             "model of the same device and dtype.", ""]
    for (device, dtype), rows in group_by(data["rows"], ("device", "dtype")).items():
        dense = next(r for r in rows if r["variant"] == "dense")
        lines += [f"### {device}, {dtype} ({data['runs'].get(f'{device} {dtype}', '')})", "",
                  "| model | params | KV heads | MLP widths | prefill ms (speed-up) | decode tok/s, batch 1 (speed-up) | "
                  "decode tok/s, batch 8 (speed-up) | peak GB |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            widths = "-" if "mlp_widths" not in r else "-".join(map(str, dict.fromkeys(r["mlp_widths"])))
            kv = "-" if "kv_heads" not in r else "-".join(map(str, dict.fromkeys(r["kv_heads"])))
            lines.append(
                f"| {r['model']} | {r['params'] / 1e9:.3f} B | {kv} | {widths} | "
                f"{r['prefill_ms']:.0f} ({dense['prefill_ms'] / r['prefill_ms']:.2f}x) | "
                f"{r['decode_tok_s_b1']:.2f} ({r['decode_tok_s_b1'] / dense['decode_tok_s_b1']:.2f}x) | "
                f"{r['decode_tok_s_b8']:.2f} ({r['decode_tok_s_b8'] / dense['decode_tok_s_b8']:.2f}x) | {r['peak_gb']:.2f} |")
        lines.append("")
    path = RESULTS / "pruned_speed.md"
    notes = path.read_text().partition("<!-- notes -->")[2] if path.exists() else ""
    path.write_text("\n".join(lines) + "\n<!-- notes -->" + (notes or "\n"))
    print("\n".join(lines))


def group_by(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=2, help="timed prefill passes after the warm-up")
    ap.add_argument("--workdir", help="where the models are written for the run (default: the system's temp dir)")
    ap.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)  # one model, in this fresh process
    ap.add_argument("--report", action="store_true", help="only rewrite pruned_speed.md from the JSON")
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.device, args.dtype, args.repeats)))
    elif args.report:
        report(json.loads((RESULTS / "pruned_speed.json").read_text()))
    else:
        run(args)


if __name__ == "__main__":
    main()
