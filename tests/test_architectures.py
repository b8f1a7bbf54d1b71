"""Masked-dense oracle tests of tracing, group finding and execution across architectures.

Nine HF architectures (Llama GQA and MHA, Mistral -- also with eager attention --, Qwen2, Phi-3,
Gemma, GPT-2, GPT-NeoX, OPT) and a hand-written nanoGPT traced with no registration (two
attention styles).  Every model is a tiny random one built from a config here (nothing is
downloaded).  For the *exact* kinds (attention heads, KV groups, query heads, MLP channels) the
physically pruned model must reproduce, to fp32 round-off, an independent reference: a deep
copy of the original in which every member slice of every removed unit is zeroed.  Hidden
channels run through norms, so masking them is not equivalent to removing them; for those,
shapes, finiteness, generation and the (exact) input of the first block are checked.

Sizes are chosen so that no two prunable structures coincide: vocab 97, hidden 48, 6 heads of
head_dim 8 (Gemma: head_dim 10, so heads * head_dim != hidden), MLP width 80 (nanoGPT: 4 * 48),
GQA with 3 KV heads (2 query heads per group) or 2 KV heads (3 per group).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from depgraph import meta_copy, trace
from depgraph.groups import find_groups, layer_of
from pruners.attributes import AttributeInferenceError
from pruners.executor import execute

VOCAB, LAYERS, HIDDEN, HEADS, HEAD_DIM, FFN = 97, 2, 48, 6, 8, 80
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
SEQ_SHAPE = (2, 11)
ATOL = 1e-5


# -- a nanoGPT written the way people write it, traced with no registration at all -------------


class NanoConfig:
    def __init__(self, vocab_size=VOCAB, block_size=32, n_layer=LAYERS, n_head=HEADS, n_embd=HIDDEN, bias=True):
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd, self.bias = n_layer, n_head, n_embd, bias


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head

    def forward(self, x):
        B, T, _ = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_embd)
        return self.c_proj(y)


class KarpathyAttention(CausalSelfAttention):
    """nanoGPT's attention verbatim: the head dim is ``C // n_head`` with ``C`` the *residual* width."""

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NanoMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, config, attention=CausalSelfAttention):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = NanoMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, config, attention=CausalSelfAttention):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "h": nn.ModuleList([NanoBlock(config, attention) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.n_embd, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx):
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


# -- the architectures ---------------------------------------------------------------------------


@dataclass
class Arch:
    build: Callable[[], nn.Module]
    kv_heads: int | None  # None: multi-head attention (attention_head groups)
    head_dim: int
    mlp: int
    # parameters removed with one unit, derived by hand from the architecture
    head_params: int  # one attention head / one KV group
    query_params: int | None  # one query head inside a KV group
    mlp_params: int
    hf: bool = True
    refused: tuple[str, ...] = ()  # kinds whose plans execute() must refuse (no attribute update can work)


def _hf(config_cls, model_cls, attn=None, **kw):
    def build():
        torch.manual_seed(0)
        model = model_cls(config_cls(**kw)).float().eval()
        if attn is not None:
            model.set_attn_implementation(attn)
        return model

    return build


def _nanogpt(attention=CausalSelfAttention):
    def build():
        torch.manual_seed(0)
        return NanoGPT(NanoConfig(), attention).eval()

    return build


def _llama_like(kv, hd=HEAD_DIM, bias=False, gated=True):
    """Parameters removed with one KV group (or head), one query head and one MLP channel.

    q/k/v rows and o columns of the unit's heads (plus q/k/v biases), and gate/up rows and down
    columns (gated) or fc1 rows, fc1 bias and fc2 columns (not gated).  Written out by hand so that
    ``Group.unit_params`` is checked against the architecture, not against itself.
    """
    q_rows = hd * (HEADS // kv if kv else 1)
    kv_rows = 2 * hd
    head = (q_rows + kv_rows) * HIDDEN + q_rows * HIDDEN + (q_rows + kv_rows) * bias
    query = hd * HIDDEN * 2 + hd * bias if kv else None
    mlp = 3 * HIDDEN if gated else 2 * HIDDEN + 1
    return {"head_params": head, "query_params": query, "mlp_params": mlp}


_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
    max_position_embeddings=64,
    **TOKENS,
)
T = transformers
ARCHS: dict[str, Arch] = {
    "llama_gqa": Arch(
        _hf(T.LlamaConfig, T.LlamaForCausalLM, **_COMMON, num_key_value_heads=3, head_dim=HEAD_DIM),
        kv_heads=3, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(3),
    ),
    "llama_mha": Arch(
        _hf(T.LlamaConfig, T.LlamaForCausalLM, **_COMMON, num_key_value_heads=HEADS),
        kv_heads=None, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(None),
    ),
    "mistral": Arch(
        _hf(T.MistralConfig, T.MistralForCausalLM, **_COMMON, num_key_value_heads=2, head_dim=HEAD_DIM),
        kv_heads=2, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(2),
    ),
    # eager attention repeats KV heads by ``num_key_value_groups`` itself (SDPA does it with enable_gqa):
    # the attribute update is then needed for the forward pass, not only for bookkeeping
    "mistral_eager": Arch(
        _hf(T.MistralConfig, T.MistralForCausalLM, attn="eager", **_COMMON, num_key_value_heads=2, head_dim=HEAD_DIM),
        kv_heads=2, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(2),
    ),
    "qwen2": Arch(
        _hf(T.Qwen2Config, T.Qwen2ForCausalLM, **_COMMON, num_key_value_heads=3),
        kv_heads=3, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(3, bias=True),
    ),
    "phi3": Arch(
        _hf(T.Phi3Config, T.Phi3ForCausalLM, **_COMMON, num_key_value_heads=2),
        kv_heads=2, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(2),
    ),
    "gemma": Arch(
        _hf(T.GemmaConfig, T.GemmaForCausalLM, **_COMMON, num_key_value_heads=3, head_dim=10),
        kv_heads=3, head_dim=10, mlp=FFN, **_llama_like(3, hd=10),
    ),
    "gpt2": Arch(
        _hf(T.GPT2Config, T.GPT2LMHeadModel, vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
            n_inner=FFN, n_positions=64, **TOKENS),
        kv_heads=None, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(None, bias=True, gated=False),
    ),
    "gpt_neox": Arch(
        _hf(T.GPTNeoXConfig, T.GPTNeoXForCausalLM, **_COMMON, use_parallel_residual=True, rotary_pct=0.5),
        kv_heads=None, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(None, bias=True, gated=False),
    ),
    "opt": Arch(
        _hf(T.OPTConfig, T.OPTForCausalLM, vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, ffn_dim=FFN, word_embed_proj_dim=HIDDEN, max_position_embeddings=64, **TOKENS),
        kv_heads=None, head_dim=HEAD_DIM, mlp=FFN, **_llama_like(None, bias=True, gated=False),
    ),
    "nanogpt": Arch(
        _nanogpt(), kv_heads=None, head_dim=HEAD_DIM, mlp=4 * HIDDEN, hf=False,
        **_llama_like(None, bias=True, gated=False),
    ),
    # Karpathy's attention reads the head dim as C // n_head and merges heads back with view(B, T, C),
    # C being the residual width taken from the input: after removing heads (or hidden channels) no
    # value of n_head / n_embd makes it run, so execute() must refuse instead of returning a broken model.
    "nanogpt_karpathy": Arch(
        _nanogpt(KarpathyAttention), kv_heads=None, head_dim=HEAD_DIM, mlp=4 * HIDDEN, hf=False,
        refused=("attention_head", "hidden_channel"), **_llama_like(None, bias=True, gated=False),
    ),
}


def head_kind(arch: str) -> str:
    return "kv_group" if ARCHS[arch].kv_heads else "attention_head"


def exact_kinds(arch: str) -> list[str]:
    spec = ARCHS[arch]
    kinds = [head_kind(arch)] + (["query_head"] if spec.kv_heads else []) + ["mlp_channel"]
    if spec.kv_heads or not spec.hf:  # every exact kind in one plan (KV groups and query heads together)
        kinds.append("combined")
    refused = set(spec.refused) | ({"combined"} if spec.refused else set())
    return [k for k in kinds if k not in refused]


EXACT_CASES = [(a, k) for a in ARCHS for k in exact_kinds(a)]
ALL_CASES = EXACT_CASES + [(a, "hidden_channel") for a in ARCHS if "hidden_channel" not in ARCHS[a].refused]
REFUSED_CASES = [(a, k) for a in ARCHS for k in ARCHS[a].refused]


# -- shared state: each architecture traced once, each plan executed once ------------------------


@dataclass
class Traced:
    model: nn.Module
    trace: object
    groups: list
    state: dict[str, torch.Tensor]  # snapshot taken before any execute
    attrs: dict  # size-like attributes and config, snapshot


def _attr_snapshot(model: nn.Module) -> dict:
    out = {}
    for path, mod in model.named_modules():
        for k, v in vars(mod).items():
            if type(v) in (int, float, bool, str, tuple):
                out[(path, k)] = v
        cfg = getattr(mod, "config", None)
        if cfg is not None:
            out[(path, "config")] = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    return out


@pytest.fixture(scope="session")
def traced():
    cache: dict[str, Traced] = {}

    def get(arch: str) -> Traced:
        if arch not in cache:
            model = ARCHS[arch].build()
            tr = trace(meta_copy(model))
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            cache[arch] = Traced(model, tr, find_groups(tr), state, copy.deepcopy(_attr_snapshot(model)))
        return cache[arch]

    return get


def _count(layer: int, n: int) -> int:
    """Units kept in ``layer`` of a group of ``n``: different fractions in different layers."""
    return min(n - 1, max(1, round(n * (0.6, 0.35)[layer % 2])))


def make_plan(groups, kind: str, seed: int = 0) -> dict[str, list[int]]:
    """A random plan for one kind, or for every exact kind at once (``combined``)."""
    rng = np.random.default_rng(seed)
    by_layer = {g.layer: g for g in groups if g.kind in ("kv_group", "attention_head")}
    keep: dict[str, list[int]] = {}
    kinds = ("attention_head", "kv_group", "query_head", "mlp_channel") if kind == "combined" else (kind,)
    for g in groups:
        if g.kind not in kinds:
            continue
        if g.kind == "query_head":
            b = g.units_per_block
            per = 1 + g.layer % (b - 1) if b > 2 else 1  # equal count in every KV group of the layer
            blocks = range(g.n_units // b)
            if kind == "combined":  # only inside the KV groups the kv_group plan keeps
                blocks = keep[by_layer[g.layer].id]
            keep[g.id] = sorted(int(blk * b + r) for blk in blocks for r in rng.choice(b, per, replace=False))
        elif g.kind == "hidden_channel":
            keep[g.id] = sorted(rng.choice(g.n_units, g.n_units - 11, replace=False).tolist())
        else:
            keep[g.id] = sorted(rng.choice(g.n_units, _count(g.layer, g.n_units), replace=False).tolist())
    assert keep, f"no {kind} group to plan"
    return keep


def removed_masks(model: nn.Module, groups, keep) -> dict[str, torch.Tensor]:
    """Per parameter/buffer: True where a removed unit of a planned group owns the position."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    masks: dict[str, torch.Tensor] = {}
    for g in groups:
        if g.id not in keep:
            continue
        for u in sorted(set(range(g.n_units)) - set(keep[g.id])):
            for m in g.members:
                t = tensors[m.param]
                mask = masks.setdefault(m.param, torch.zeros(t.shape, dtype=torch.bool))
                mask.index_fill_(m.axis, torch.as_tensor(m.indices(u), dtype=torch.long), True)
    return masks


def masked_reference(model: nn.Module, groups, keep) -> nn.Module:
    """The oracle: a deep copy of ``model`` with every member slice of every removed unit zeroed."""
    ref = copy.deepcopy(model)
    tensors = dict(ref.named_parameters())
    tensors.update(dict(ref.named_buffers()))
    with torch.no_grad():
        for name, mask in removed_masks(model, groups, keep).items():
            tensors[name].masked_fill_(mask, 0.0)
    return ref


@dataclass
class Pruned:
    model: nn.Module
    record: object
    keep: dict[str, list[int]]


@pytest.fixture(scope="session")
def pruned(traced):
    cache: dict[tuple[str, str], Pruned] = {}

    def get(arch: str, kind: str) -> Pruned:
        if (arch, kind) not in cache:
            t = traced(arch)
            keep = make_plan(t.groups, kind)
            model, record = execute(t.model, t.trace, t.groups, keep)
            cache[(arch, kind)] = Pruned(model.eval(), record, keep)
        return cache[(arch, kind)]

    return get


@pytest.fixture(scope="module")
def batch():
    return torch.randint(3, VOCAB, SEQ_SHAPE, generator=torch.Generator().manual_seed(1234))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def first_block(model: nn.Module) -> str:
    """Path of the module holding every layer-0 parameter (``model.layers.0``, ``transformer.h.0``)."""
    names = [n.split(".") for n, _ in model.named_parameters() if layer_of(n) == 0]
    prefix = names[0]
    for parts in names[1:]:
        k = 0
        while k < min(len(prefix), len(parts)) and prefix[k] == parts[k]:
            k += 1
        prefix = prefix[:k]
    return ".".join(prefix)


def block_input(model: nn.Module, path: str, ids: torch.Tensor) -> torch.Tensor:
    """The hidden states passed to the module at ``path`` during a forward pass."""
    seen = []

    def hook(mod, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])

    handle = model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        logits(model, ids)
    finally:
        handle.remove()
    return seen[0]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters once


# -- 1. groups ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_groups_found(traced, arch):
    spec, t = ARCHS[arch], traced(arch)
    assert not t.trace.conflicts, t.trace.conflicts
    expected_layer = {"mlp_channel": (spec.mlp, None, spec.mlp_params)}
    if spec.kv_heads:
        expected_layer["kv_group"] = (spec.kv_heads, None, spec.head_params)
        expected_layer["query_head"] = (HEADS, HEADS // spec.kv_heads, spec.query_params)
    else:
        expected_layer["attention_head"] = (HEADS, None, spec.head_params)
    for layer in range(LAYERS):
        got = {g.kind: (g.n_units, g.units_per_block, g.unit_params) for g in t.groups if g.layer == layer}
        assert got == expected_layer, f"layer {layer}"
        for g in (g for g in t.groups if g.layer == layer):
            assert g.exact, g.id
            assert {layer_of(m.param) for m in g.members} == {layer}, g.id
    hidden = [g for g in t.groups if g.kind == "hidden_channel"]
    assert len(hidden) == 1
    assert hidden[0].layer is None and hidden[0].n_units == HIDDEN and not hidden[0].exact
    # the hidden group reaches every layer and the embedding
    assert {layer_of(m.param) for m in hidden[0].members} >= set(range(LAYERS)) | {None}
    # nothing else is pruned by default: other groups are whole-model vocabulary and position rows
    assert {g.kind for g in t.groups if g.layer is None} <= {"hidden_channel", "vocab", "position"}
    assert {g.layer for g in t.groups} == set(range(LAYERS)) | {None}


# -- 2. masked-dense oracle for the exact kinds --------------------------------------------------


@pytest.mark.parametrize("arch,kind", EXACT_CASES)
def test_masked_dense_oracle(traced, pruned, batch, arch, kind):
    t, p = traced(arch), pruned(arch, kind)
    ref = masked_reference(t.model, t.groups, p.keep)
    got, want = logits(p.model, batch), logits(ref, batch)
    assert got.shape == (*SEQ_SHAPE, VOCAB)
    diff = (got - want).abs().max().item()
    assert diff <= ATOL, f"max |pruned - masked| = {diff:.3e}"
    # the pruning is not a no-op: the masked model differs from the original
    assert (logits(t.model, batch) - want).abs().max().item() > 1e-3

    # parameter count: from the groups' unit sizes, and from the masked positions
    by_id = {g.id: g for g in t.groups}
    param_names = dict(t.model.named_parameters())
    removed_positions = sum(int(m.sum()) for name, m in removed_masks(t.model, t.groups, p.keep).items()
                            if name in param_names)
    assert n_params(p.model) == n_params(t.model) - removed_positions
    if kind != "combined":  # in a combined plan a query head inside a removed KV group is in both
        by_units = sum((by_id[gid].n_units - len(k)) * by_id[gid].unit_params for gid, k in p.keep.items())
        assert n_params(p.model) == n_params(t.model) - by_units


@pytest.mark.parametrize("arch,kind", EXACT_CASES)
def test_pruned_shapes(traced, pruned, arch, kind):
    """Shapes follow the plan: every member axis keeps (units kept) * (positions per unit)."""
    t, p = traced(arch), pruned(arch, kind)
    params = dict(p.model.named_parameters())
    params.update(dict(p.model.named_buffers()))
    orig = dict(t.model.named_parameters())
    orig.update(dict(t.model.named_buffers()))
    expected: dict[tuple[str, int], int] = {}
    for name, mask in removed_masks(t.model, t.groups, p.keep).items():
        for axis in range(mask.ndim):
            other = tuple(d for d in range(mask.ndim) if d != axis)
            gone = mask.all(dim=other) if other else mask
            expected[(name, axis)] = orig[name].shape[axis] - int(gone.sum())
    for (name, axis), n in expected.items():
        assert params[name].shape[axis] == n, (name, axis)
    assert expected and any(orig[name].shape[axis] != n for (name, axis), n in expected.items())


# -- 3. hidden channels ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [a for a, k in ALL_CASES if k == "hidden_channel"])
def test_hidden_channels(traced, pruned, batch, arch):
    # Hidden channels pass through RMSNorm/LayerNorm, whose statistics are taken over every
    # channel: zeroing a channel is not the same as removing it, so there is no exact oracle for
    # the logits.  Check instead that shapes shrink as planned, logits stay finite, generation runs,
    # and -- exact, since no norm has been applied yet -- that the residual stream entering the
    # first block is the original one restricted to the kept channels.
    t, p = traced(arch), pruned(arch, "hidden_channel")
    (gid, kept), = p.keep.items()
    group = next(g for g in t.groups if g.id == gid)
    params = dict(p.model.named_parameters())
    params.update(dict(p.model.named_buffers()))
    orig = dict(t.model.named_parameters())
    orig.update(dict(t.model.named_buffers()))
    removed = sorted(set(range(group.n_units)) - set(kept))
    assert len(group.members) > 3 * LAYERS
    for m in group.members:
        gone = sum(len(m.indices(u)) for u in removed)
        assert gone > 0, m.param
        assert params[m.param].shape[m.axis] == orig[m.param].shape[m.axis] - gone, (m.param, m.axis)
    out = logits(p.model, batch)
    assert out.shape == (*SEQ_SHAPE, VOCAB)
    assert torch.isfinite(out).all()

    embedding = next(n for n, mod in t.model.named_modules() if isinstance(mod, nn.Embedding)
                     and mod.num_embeddings == VOCAB)
    (emb,) = [m for m in group.members if m.param == f"{embedding}.weight"]
    channels = torch.as_tensor(np.flatnonzero(np.isin(emb.unit_of, kept)))
    block = first_block(t.model)
    want = block_input(t.model, block, batch).index_select(-1, channels)
    got = block_input(p.model, block, batch)
    assert got.shape == (*SEQ_SHAPE, len(kept)) and got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-6
    # generate() on this pruned model (HF architectures): test_generate_with_cache[<arch>-hidden_channel]


# -- 4. generation with the KV cache -----------------------------------------------------------


@pytest.mark.parametrize("arch,kind", [(a, k) for a, k in ALL_CASES if ARCHS[a].hf])
def test_generate_with_cache(pruned, batch, arch, kind):
    model = pruned(arch, kind).model
    kw = {"attention_mask": torch.ones_like(batch), "max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        cached = model.generate(batch, use_cache=True, **kw)
        plain = model.generate(batch, use_cache=False, **kw)
    assert cached.shape == (SEQ_SHAPE[0], SEQ_SHAPE[1] + 5)
    assert torch.equal(cached[:, : SEQ_SHAPE[1]], batch)
    assert torch.equal(cached, plain)


# -- 5. the input model is left alone ----------------------------------------------------------


@pytest.mark.parametrize("arch,kind", ALL_CASES)
def test_input_model_unchanged(traced, pruned, arch, kind):
    t = traced(arch)
    pruned(arch, kind)  # make sure this plan was executed
    now = t.model.state_dict()
    assert now.keys() == t.state.keys()
    for k, v in t.state.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k
    assert _attr_snapshot(t.model) == t.attrs
    assert all(p.device.type == "cpu" for p in t.model.parameters())


# -- plans that cannot be executed are refused, not carried out wrongly --------------------------


@pytest.mark.parametrize("arch,kind", REFUSED_CASES)
def test_refused(traced, arch, kind):
    t = traced(arch)
    with pytest.raises(AttributeInferenceError):
        execute(t.model, t.trace, t.groups, make_plan(t.groups, kind))
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, t.state[k]), k
    assert _attr_snapshot(t.model) == t.attrs


@pytest.mark.parametrize("arch,kind", [(a, k) for a, k in ALL_CASES if ARCHS[a].hf])
def test_save_load_round_trip(pruned, batch, arch, kind, tmp_path):
    """The saved directory reloads (through its depprune record, or as a plain HF model when the
    config can say it) into a model with bit-identical logits and the same parameter count."""
    from pruners.checkpoint import load_model, save_pruned

    p = pruned(arch, kind)
    out = save_pruned(p.model, tmp_path / "out", p.record)
    attn = p.model.config._attn_implementation  # a runtime choice transformers does not save
    loaded = load_model(out, attn_implementation=attn)
    assert sum(x.numel() for x in loaded.parameters()) == sum(x.numel() for x in p.model.parameters())
    assert torch.equal(logits(loaded, batch), logits(p.model, batch))
    if p.record.config:
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(out, attn_implementation=attn).eval()
        assert torch.equal(logits(plain, batch), logits(p.model, batch))
