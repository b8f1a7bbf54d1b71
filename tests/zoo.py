"""The test zoo: tiny models of every architecture, the real shared models, and the masked-dense oracle.

Every test that needs a model takes it from here (or from the fixtures in ``conftest.py``):

- :data:`ARCHS` -- tiny random models (nothing downloaded) of eleven HF architectures and a
  hand-written nanoGPT, with the parameters one unit of each kind removes, derived by hand;
  :func:`tiny_llama` for tests that need any small Llama;
- :data:`STORIES` and friends -- the real models and data in ``../shared`` (read only); a test
  that needs them is marked ``@pytest.mark.shared``: skipped when ``../shared`` is absent,
  a failure instead when ``DEPPRUNE_REQUIRE_SHARED=1`` (``.ci/run`` sets it);
- :func:`masked_reference` -- the oracle: the dense model with every member slice of every
  removed unit zeroed (:func:`pruners.masked_copy`), and :func:`random_plan`, plans to test it on.

Sizes are chosen so that no two prunable structures coincide: vocab 97, hidden 48, 6 heads of
head_dim 8 (Gemma: head_dim 10, so heads * head_dim != hidden), MLP width 80 (nanoGPT: 4 * 48),
GQA with 3 KV heads (2 query heads per group) or 2 KV heads (3 per group).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from depgraph.groups import Group, Member
from pruners import masked_copy, removed_positions

# -- the real models and data in ../shared (read only) -------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = SHARED / "models"
STORIES = MODELS / "stories260K"
DATA = SHARED / "data"
TINYSTORIES_VALID = DATA / "tinystories-valid" / "TinyStories-valid.first46.txt"
TINYSTORIES_TRAIN = DATA / "tinystories-train" / "tinystories-train.cased.txt"
REQUIRE_SHARED = "DEPPRUNE_REQUIRE_SHARED"  # set by .ci/run: a missing ../shared fails instead of skipping


def require_shared(path: Path = STORIES) -> Path:
    """``path`` under ../shared; skips the test when it is absent, or fails it under ``DEPPRUNE_REQUIRE_SHARED=1``."""
    if not path.exists():
        message = f"{path} is not present (the models and data in ../shared)"
        if os.environ.get(REQUIRE_SHARED) == "1":
            pytest.fail(f"{message}, and {REQUIRE_SHARED}=1 requires it", pytrace=False)
        pytest.skip(message)
    return path


# -- tiny random models --------------------------------------------------------------------------

VOCAB, LAYERS, HIDDEN, HEADS, HEAD_DIM, FFN = 97, 2, 48, 6, 8, 80
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
SEQ_SHAPE = (2, 11)
ATOL = 1e-5



def tiny_llama(seed: int = 0, **overrides) -> nn.Module:
    """A tiny random Llama (GQA: 4 query heads, 2 KV heads; hidden 16) in fp32, eval mode."""
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, **TOKENS)
    kw.update(overrides)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).float().eval()


def tiny_gpt2(seed: int = 0, **overrides) -> nn.Module:
    """A tiny random GPT-2 (learned positions, Conv1D projections; 2 layers of width 32) in fp32, eval mode."""
    torch.manual_seed(seed)
    kw = dict(n_positions=64, n_embd=32, n_layer=2, n_head=4, vocab_size=64)
    kw.update(overrides)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)).eval()


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
    build: Callable[..., nn.Module]  # build(layers=LAYERS): the model, with that many decoder layers
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
    def build(layers: int = LAYERS):
        torch.manual_seed(0)
        depth = {key: layers for key in ("num_hidden_layers", "n_layer") if key in kw}
        model = model_cls(config_cls(**{**kw, **depth})).float().eval()
        if attn is not None:
            model.set_attn_implementation(attn)
        return model

    return build


def _nanogpt(attention=CausalSelfAttention):
    def build(layers: int = LAYERS):
        torch.manual_seed(0)
        return NanoGPT(NanoConfig(n_layer=layers), attention).eval()

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




# -- more architectures: multi-query, interleaved qkv, parallel blocks, learned activations ----------

NANO_FFN = 4 * HIDDEN  # nanoGPT's and Bloom's MLP width

# -- hand-written modules ------------------------------------------------------------------------


class MultiQueryAttention(CausalSelfAttention):
    """nanoGPT-style multi-query attention: ``c_attn`` gives all query heads, then one key and one value head."""

    def __init__(self, config):
        super().__init__(config)
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * self.head_dim, bias=config.bias)

    def forward(self, x):
        B, T_, _ = x.size()
        q, k, v = self.c_attn(x).split([self.n_head * self.head_dim, self.head_dim, self.head_dim], dim=2)
        q = q.view(B, T_, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T_, 1, self.head_dim).transpose(1, 2)  # (B, 1, T, hd): broadcast over the heads
        v = v.view(B, T_, 1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T_, self.n_head * self.head_dim)
        return self.c_proj(y)


class InterleavedAlibiAttention(CausalSelfAttention):
    """Bloom-style attention: ``c_attn`` rows are ``[q_h, k_h, v_h]`` per head h, ALiBi slopes stored per head."""

    def __init__(self, config):
        super().__init__(config)
        n = self.n_head
        self.register_buffer("alibi_slopes", torch.tensor([2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]))

    def forward(self, x):
        B, T_, _ = x.size()
        qkv = self.c_attn(x).view(B, T_, self.n_head, 3, self.head_dim)  # (B, T, nh, 3, hd)
        q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))  # (B, nh, T, hd)
        pos = torch.arange(T_, device=x.device)
        distance = (pos[None, :] - pos[:, None]).to(x.dtype)  # (T, T)
        bias = self.alibi_slopes[:, None, None] * distance  # (nh, T, T)
        causal = torch.ones(T_, T_, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal, float("-inf")))
        y = y.transpose(1, 2).contiguous().view(B, T_, self.n_head * self.head_dim)
        return self.c_proj(y)


class LearnedSwish(nn.Module):
    """``x * sigmoid(beta * x)`` with a learned ``beta`` (a scalar, or one per channel)."""

    def __init__(self, shape=()):
        super().__init__()
        self.beta = nn.Parameter(torch.full(shape, 1.5))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


class ActivationMLP(NanoMLP):
    """nanoGPT's MLP with another activation, applied to ``(tokens, channels)`` (PReLU's channel axis is 1)."""

    def __init__(self, config, activation: nn.Module):
        super().__init__(config)
        self.gelu = activation

    def forward(self, x):
        h = self.c_fc(x)  # (B, T, ffn)
        B, T_, C = h.shape
        return self.c_proj(self.gelu(h.reshape(B * T_, C)).view(B, T_, C))


class NanoLM(NanoGPT):
    """NanoGPT with the two things the pruning pipeline reads: ``.logits`` and ``get_input_embeddings``."""

    def __init__(self, config, attention=CausalSelfAttention, activation=None):
        super().__init__(config, attention)
        if activation is not None:
            for block in self.transformer.h:
                with torch.no_grad():
                    act = activation()
                    for p in act.parameters():  # distinct per channel, so that slicing them matters
                        p.copy_(torch.linspace(0.05, 0.95, p.numel()).reshape(p.shape))
                block.mlp = ActivationMLP(config, act)

    def get_input_embeddings(self):
        return self.transformer.wte

    def forward(self, idx):
        return CausalLMOutput(logits=super().forward(idx))


def _nano(attention=CausalSelfAttention, activation=None):
    def build(layers: int = LAYERS):
        torch.manual_seed(0)
        return NanoLM(NanoConfig(n_layer=layers), attention, activation).eval()

    return build


# -- the architectures ---------------------------------------------------------------------------


@dataclass
class NewArch(Arch):
    heads_frozen: bool = False  # attention heads can never be pruned (no head groups)
    positions: int | None = None  # rows of a learned position embedding
    activation_param: str | None = None  # "channel": a per-channel activation parameter joins the MLP group


def _attn(q_rows: int, kv_rows: int, bias: bool) -> int:
    """Parameters removed with one head: its q/k/v rows (and biases) and its o columns."""
    return (q_rows + kv_rows) * HIDDEN + (q_rows + kv_rows) * bias + q_rows * HIDDEN


def _mlp(bias: bool, extra: int = 0) -> int:
    """Parameters removed with one plain-MLP channel: an fc1 row (and bias), an fc2 column, ``extra``."""
    return 2 * HIDDEN + bias + extra


_MHA = dict(kv_heads=None, head_dim=HEAD_DIM, query_params=None)
NEW_ARCHS: dict[str, NewArch] = {
    # multi-query: a unit is one query head (q rows, o columns); the one shared KV head is kept
    "gpt_bigcode_mq": NewArch(
        _hf(T.GPTBigCodeConfig, T.GPTBigCodeForCausalLM, vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS,
            n_head=HEADS, n_inner=FFN, n_positions=64, multi_query=True, **TOKENS),
        mlp=FFN, head_params=_attn(HEAD_DIM, 0, True), mlp_params=_mlp(True), positions=64, **_MHA,
    ),
    "nanogpt_mq": NewArch(
        _nano(MultiQueryAttention), mlp=NANO_FFN, head_params=_attn(HEAD_DIM, 0, True), mlp_params=_mlp(True),
        hf=False, positions=32, **_MHA,
    ),
    # fused qkv interleaved per head, parallel attention + GELU MLP, x @ W.T linear layers, no biases
    "falcon": NewArch(
        _hf(T.FalconConfig, T.FalconForCausalLM, vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, ffn_hidden_size=FFN, multi_query=False, parallel_attn=True,
            new_decoder_architecture=False, alibi=False, **TOKENS),
        mlp=FFN, head_params=_attn(HEAD_DIM, 2 * HEAD_DIM, False), mlp_params=_mlp(False), **_MHA,
    ),
    "nanogpt_interleaved_alibi": NewArch(
        _nano(InterleavedAlibiAttention), mlp=NANO_FFN, head_params=_attn(HEAD_DIM, 2 * HEAD_DIM, True),
        mlp_params=_mlp(True), hf=False, positions=32, **_MHA,
    ),
    "bloom": NewArch(
        _hf(T.BloomConfig, T.BloomForCausalLM, vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS,
            **TOKENS),
        mlp=NANO_FFN, head_params=0, mlp_params=_mlp(True), heads_frozen=True, **_MHA,
    ),
    # parallel attention + plain GELU MLP
    "gptj": NewArch(
        _hf(T.GPTJConfig, T.GPTJForCausalLM, vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
            n_inner=FFN, n_positions=64, rotary_dim=4, **TOKENS),
        mlp=FFN, head_params=_attn(HEAD_DIM, 2 * HEAD_DIM, False), mlp_params=_mlp(True), **_MHA,
    ),
    "phi": NewArch(
        _hf(T.PhiConfig, T.PhiForCausalLM, vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64, **TOKENS),
        mlp=FFN, head_params=_attn(HEAD_DIM, 2 * HEAD_DIM, True), mlp_params=_mlp(True), **_MHA,
    ),
    # activations with learned parameters: per channel (one more parameter per MLP channel) or scalar
    "nanogpt_prelu": NewArch(
        _nano(activation=lambda: nn.PReLU(num_parameters=NANO_FFN)), mlp=NANO_FFN,
        head_params=_attn(HEAD_DIM, 2 * HEAD_DIM, True), mlp_params=_mlp(True, extra=1), hf=False, positions=32,
        activation_param="channel", **_MHA,
    ),
    "nanogpt_prelu_scalar": NewArch(
        _nano(activation=nn.PReLU), mlp=NANO_FFN, head_params=_attn(HEAD_DIM, 2 * HEAD_DIM, True),
        mlp_params=_mlp(True), hf=False, positions=32, activation_param="scalar", **_MHA,
    ),
    "nanogpt_swish_scalar": NewArch(
        _nano(activation=LearnedSwish), mlp=NANO_FFN, head_params=_attn(HEAD_DIM, 2 * HEAD_DIM, True),
        mlp_params=_mlp(True), hf=False, positions=32, activation_param="scalar", **_MHA,
    ),
}




# -- two linear layers with one MLP-like group, weights by hand -----------------------------------


class Two(nn.Module):
    """``up`` (2 -> 3) then ``down`` (3 -> 2), weights chosen by hand: three units, rows of up and columns of down."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(2, 3, bias=False)
        self.down = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 4.0]]))  # rows = units
            self.down.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [-1.0, 3.0, 0.0]]))  # columns = units


def channel_group() -> Group:
    """The one group of :class:`Two`: its three units and their up rows and down columns."""
    unit_of = np.arange(3)
    members = [Member("up.weight", 0, unit_of), Member("down.weight", 1, unit_of)]
    return Group("mlp_channel@0", "mlp_channel", 0, 3, members, unit_params=4, mask_equivalent=True, factors=("f",))



# -- helpers -------------------------------------------------------------------------------------


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The logits of ``model`` on ``ids`` (no gradients), for HF models and plain modules alike."""
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def n_params(model: nn.Module) -> int:
    """Parameters of ``model``, tied ones counted once."""
    return sum(p.numel() for p in model.parameters())  # tied parameters once


def attr_snapshot(model: nn.Module) -> dict:
    """Every size-like attribute and config of every module: to show that pruning leaves the input model alone."""
    out = {}
    for path, mod in model.named_modules():
        for k, v in vars(mod).items():
            if type(v) in (int, float, bool, str, tuple):
                out[(path, k)] = v
        cfg = getattr(mod, "config", None)
        if cfg is not None:
            out[(path, "config")] = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    return out


def install_package(directory: Path, monkeypatch, module: str, source: str, entry_points: str) -> None:
    """Put a package on ``sys.path`` as pip would: ``module``.py holding ``source`` and a dist-info
    directory advertising ``entry_points`` (``entry_points.txt`` syntax), for plugin tests."""
    (directory / f"{module}.py").write_text(source)
    info = directory / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.delitem(sys.modules, module, raising=False)


# -- the oracle ----------------------------------------------------------------------------------


def removed_masks(model: nn.Module, groups, keep) -> dict[str, torch.Tensor]:
    """Per parameter/buffer: True where a removed unit of a planned group owns the position."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    masks: dict[str, torch.Tensor] = {}
    for name, axis, pos in removed_positions(groups, keep):
        mask = masks.setdefault(name, torch.zeros(tensors[name].shape, dtype=torch.bool))
        mask.index_fill_(axis, torch.as_tensor(pos, dtype=torch.long), True)
    return masks


def masked_reference(model: nn.Module, groups, keep) -> nn.Module:
    """The oracle: a deep copy of ``model`` with every member slice of every removed unit zeroed."""
    return masked_copy(model, removed_positions(groups, keep))


def _count(layer: int, n: int) -> int:
    """Units kept in ``layer`` of a group of ``n``: different fractions in different layers."""
    return min(n - 1, max(1, round(n * (0.6, 0.35)[layer % 2])))


def assert_oracle(model: nn.Module, groups, keep, pruned: nn.Module, ids: torch.Tensor) -> nn.Module:
    """The masked-dense oracle: ``pruned`` computes the logits of ``model`` with the removed units
    zeroed (to :data:`ATOL`), and the masking is not a no-op.  Returns the masked reference."""
    ref = masked_reference(model, groups, keep)
    got, want = logits(pruned, ids), logits(ref, ids)
    assert got.shape == (*SEQ_SHAPE, VOCAB)
    diff = (got - want).abs().max().item()
    assert diff <= ATOL, f"max |pruned - masked| = {diff:.3e}"
    assert (logits(model, ids) - want).abs().max().item() > 1e-3  # the masked model differs from the original
    return ref


def random_plan(groups, kind: str, seed: int = 0) -> dict[str, list[int]]:
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




def fix_gates(source, groups, keep) -> None:
    """Set the hard-concrete gates of ``source`` (learned.gates.HardConcreteGates) to the 0/1 plan ``keep``:
    log-alpha at the clamp, +10 (gate exactly 1) for a kept unit, -10 (exactly 0) for a removed one;
    a group ``keep`` does not name keeps every unit."""
    with torch.no_grad():
        for g in groups:
            la = source.gates[g.id].log_alpha
            la.fill_(-10.0)
            la[list(keep.get(g.id, range(g.n_units)))] = 10.0
