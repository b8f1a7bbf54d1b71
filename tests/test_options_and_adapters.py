"""The README's "Extending" examples, verbatim: an estimator with an option, and a shape adapter.

The code blocks are read from README.md and executed as they stand, so the documented examples
are the tested ones.  Expected values are computed here by hand (``sum |w|^p``) or come from the
masked-dense oracle of ``test_architectures`` (a pruned model equals the dense one with the removed
heads zeroed).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel, Field, ValidationError

from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from pruners.errors import UsageError
from pruners.importance import (
    ESTIMATORS,
    make_estimator,
    parse_option,
    parse_options,
    register_estimator,
    validate_options,
)
from pruners.pipeline import PruneConfig, count_params, member_scores, prune
from pruners.planner import make_plan as plan_from_scores
from pruners.planner import select_groups
from pruners.slicing.attributes import SHAPE_ADAPTERS, AttributeInferenceError
from pruners.slicing.executor import execute

from zoo import ARCHS, Two, channel_group, masked_reference
from zoo import random_plan as make_plan

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The README's one ```python block containing ``marker``, as it stands."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if marker in b]
    assert len(blocks) == 1, f"README.md has {len(blocks)} python blocks with {marker!r}"
    return blocks[0]


# -- estimator options: the README's Power estimator ------------------------------------------


@pytest.fixture
def power():
    exec(compile(readme_block("class PowerConfig"), "README.md", "exec"), {"__name__": "readme_power"})
    yield "power"
    ESTIMATORS.pop("power")


def by_hand(p: float) -> list[list[float]]:
    """sum |w|^p per unit of ``Two``: up rows [1, -2], [.5, .5], [-3, 4]; down columns [1, -1], [0, 3], [2, 0]."""
    return [[1 + 2**p, 2 * 0.5**p, 3**p + 4**p], [1 + 1, 3**p, 2**p]]


def test_readme_power_option_set_through_prune_config(power):
    cfg = PruneConfig(ratio=0.2, importance=power, importance_options={"power": "2.5"})  # a string, as from the CLI
    assert cfg.importance_options == {"power": 2.5}
    group = channel_group()
    rows = member_scores(Two(), [group], cfg, progress=False)
    assert np.allclose(rows[group.id].numpy(), by_hand(2.5), rtol=1e-6)  # |w|^p in fp32, summed in fp64
    default = PruneConfig(ratio=0.2, importance=power)
    rows = member_scores(Two(), [group], default, progress=False)
    assert np.allclose(rows[group.id].numpy(), by_hand(3.0), rtol=1e-6)  # PowerConfig's default


def hand_unit_scores(model, groups, p: float) -> dict[str, np.ndarray]:
    """sum over members of sum |w|^p over each unit's slice, from the weights directly."""
    weights = dict(model.named_parameters())
    out = {}
    for g in groups:
        out[g.id] = np.array([
            sum(
                float(weights[m.param].detach().double().index_select(m.axis, torch.as_tensor(m.indices(u))).abs().pow(p).sum())
                for m in g.members
            )
            for u in range(g.n_units)
        ])
    return out


def test_prune_plans_from_the_option(power):
    model = ARCHS["llama_gqa"].build()
    plans = {}
    for p in (0.25, 8.0):
        cfg = PruneConfig(ratio=0.2, importance=power, importance_options={"power": p}, kinds=["mlp_channel"])
        result = prune(model, cfg, progress=False)
        chosen = select_groups(result.groups, cfg.kinds, cfg.layers)
        expect = plan_from_scores(result.groups, hand_unit_scores(model, chosen, p), cfg, count_params(model))
        assert {k: list(v) for k, v in result.plan.keep.items()} == {k: list(v) for k, v in expect.keep.items()}
        plans[p] = result.plan.keep
    assert {k: list(v) for k, v in plans[0.25].items()} != {k: list(v) for k, v in plans[8.0].items()}  # the option matters


def test_unknown_option_lists_the_valid_ones(power):
    with pytest.raises(UsageError, match=r"^unknown option 'powr' for importance 'power'; valid: power \(exponent applied to \|w\|\)$"):
        validate_options(power, {"powr": "2"})
    with pytest.raises(ValidationError, match=r"unknown option 'powr' for importance 'power'; valid: power"):
        PruneConfig(ratio=0.2, importance=power, importance_options={"powr": 2})


@pytest.mark.parametrize(
    "value,why",
    [("abc", "input should be a valid number, unable to parse string as a number"), (True, "a boolean is not one"),
     ([2], "input should be a valid number")],
)
def test_bad_value_names_key_value_and_type(power, value, why):
    with pytest.raises(UsageError, match=rf"^option power={re.escape(repr(value))} for importance 'power': expected float \({why}"):
        validate_options(power, {"power": value})
    with pytest.raises(UsageError, match=r"option power='abc' for importance 'power': expected float"):
        make_estimator(power, power="abc")


@pytest.mark.parametrize("name", ["l1", "l2", "random", "taylor-mix", "wanda-sp"])
def test_an_estimator_without_options_says_it_takes_none(name):
    with pytest.raises(UsageError, match=rf"^importance '{name}' takes no options; got 'power'$"):
        validate_options(name, {"power": "2"})
    with pytest.raises(ValidationError, match=rf"importance '{name}' takes no options"):
        PruneConfig(ratio=0.2, importance=name, importance_options={"power": 2})
    assert PruneConfig(ratio=0.2, importance=name).importance_options == {}


STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/models is not present")
def test_run_file_importance_options(power, tmp_path, capsys):
    from pruners.cli import main

    def run(options: str, out: str):
        (tmp_path / "run.yaml").write_text(
            f"model: {STORIES}\nout: {tmp_path / out}\nratio: 0.1\nimportance: power\nimportance_options: {options}\n"
        )
        code = main(["prune", "--config", str(tmp_path / "run.yaml"), "--json", "--quiet"])
        return code, capsys.readouterr().err

    code, err = run("{power: 2.5}", "ok")
    assert code == 0, err
    saved = json.loads((tmp_path / "ok" / "config.json").read_text())["depprune"]["run"]["config"]
    assert saved["importance"] == "power" and saved["importance_options"] == {"power": 2.5}
    code, err = run("{powr: 2.5}", "bad")
    assert code == 2 and "unknown option 'powr' for importance 'power'; valid: power (exponent applied to |w|)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_importance_option_flags(power, tmp_path, capsys):
    from pruners.cli import main

    def prune_json(*flags: str, out: str):
        code = main(["prune", "--model", str(STORIES), "--ratio", "0.1", "--out", str(tmp_path / out), "--json", "--quiet", *flags])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = prune_json("--importance", "power", "--importance-option", "power=1.5", out="flag")
    assert code == 0, err
    assert json.loads(out)["importance_options"] == {"power": 1.5}
    saved = json.loads((tmp_path / "flag" / "config.json").read_text())["depprune"]["run"]["config"]
    assert saved["importance_options"] == {"power": 1.5}
    # the flag overrides the run file key by key
    (tmp_path / "run.yaml").write_text("importance: power\nimportance_options: {power: 2.5}\n")
    code, out, err = prune_json("--config", str(tmp_path / "run.yaml"), "--importance-option", "power=4", out="over")
    assert code == 0 and json.loads(out)["importance_options"] == {"power": 4.0}, err
    # another --importance drops the file's options (they were written for its estimator)
    code, out, err = prune_json("--config", str(tmp_path / "run.yaml"), "--importance", "l1", out="other")
    assert code == 0 and json.loads(out)["importance_options"] == {}, err
    for flags, message in (
        (("--importance", "power", "--importance-option", "powr=2"), "unknown option 'powr' for importance 'power'; valid: power"),
        (("--importance", "power", "--importance-option", "power"), "'power' is not KEY=VALUE, e.g. power=2.5"),
        (("--importance-option", "power=2"), "importance 'l2' takes no options; got 'power'"),
    ):
        code, _, err = prune_json(*flags, out="bad")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


class ManyConfig(BaseModel):
    scale: float = Field(1.0, description="factor")
    steps: int = Field(..., description="how many")
    signed: bool = Field(False, description="keep the sign")
    layers: list[int] = Field(default_factory=list, description="layers to score")


@pytest.fixture
def many():
    @register_estimator("test-many", config=ManyConfig)
    class Many:
        """Takes options of every kind."""

        needs = frozenset()

        def __init__(self, config):
            self.config = config

    yield "test-many"
    ESTIMATORS.pop("test-many")


def test_command_line_strings_are_coerced_by_the_field_type(many):
    given = parse_options(["scale=2.5", "steps=3", "signed=true", "layers=[1, 2]"])
    assert given == {"scale": "2.5", "steps": "3", "signed": "true", "layers": [1, 2]}
    assert validate_options(many, given) == {"scale": 2.5, "steps": 3, "signed": True, "layers": [1, 2]}
    assert make_estimator(many, **given).config == ManyConfig(scale=2.5, steps=3, signed=True, layers=[1, 2])


def test_option_errors_are_one_line(many):
    with pytest.raises(UsageError, match=r"^importance 'test-many' needs option 'steps' \(how many\); pass --importance-option steps=VALUE$"):
        validate_options(many, {"scale": "2"})
    with pytest.raises(UsageError, match=r"^option steps='2.5' for importance 'test-many': expected int \(input should be a valid integer"):
        validate_options(many, {"steps": "2.5"})
    with pytest.raises(UsageError, match=r"^unknown option 'x' for importance 'test-many'; valid: scale \(factor\), steps \(how many\), signed"):
        validate_options(many, {"x": "1"})
    with pytest.raises(UsageError, match=r"^--importance-option steps is given twice \('1' and '2'\)$"):
        parse_options(["steps=1", "steps=2"])
    with pytest.raises(UsageError, match=r"^--importance-option layers='\[1, 2' starts like JSON but does not parse"):
        parse_option("layers=[1, 2")
    with pytest.raises(UsageError, match=r"^--importance-option '=3' is not KEY=VALUE"):
        parse_option("=3")
    assert parse_option("note=a=b") == ("note", "a=b")  # everything after the first '='


# -- shape adapters: the README's FusedAttention ----------------------------------------------

MODELING = textwrap.dedent(
    '''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class FusedAttention(nn.Module):
        """q, k and v of every head in one projection; the head count lives only in ``num_heads``."""

        def __init__(self, hidden, num_heads, head_dim):
            super().__init__()
            self.num_heads, self.head_dim = num_heads, head_dim
            self.qkv = nn.Linear(hidden, 3 * num_heads * head_dim, bias=False)
            self.out = nn.Linear(num_heads * head_dim, hidden, bias=False)

        def forward(self, x):
            B, T, _ = x.shape
            qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
            return self.out(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


    class WideAttention(FusedAttention):
        """Also stores its inner width, which no adapter sets: inference must."""

        def __init__(self, hidden, num_heads, head_dim):
            super().__init__(hidden, num_heads, head_dim)
            self.inner = num_heads * head_dim

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(B, T, self.inner))


    class TinyFused(nn.Module):
        """Embedding, residual attention layers with their own head counts, LM head."""

        def __init__(self, heads, attention=FusedAttention, hidden=14, head_dim=2, vocab=29):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList([attention(hidden, h, head_dim) for h in heads])
            self.head = nn.Linear(hidden, vocab, bias=False)

        def forward(self, idx):
            x = self.embed(idx)
            for layer in self.layers:
                x = x + layer(x)
            return self.head(x)
    '''
)


@pytest.fixture
def modeling(tmp_path, monkeypatch):
    """``my_models.modeling`` as a real importable module, so its classes have the README's qualnames."""
    (tmp_path / "my_models").mkdir()
    (tmp_path / "my_models" / "__init__.py").write_text("")
    (tmp_path / "my_models" / "modeling.py").write_text(MODELING)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_models.modeling

    yield my_models.modeling
    for name in ("my_models.modeling", "my_models"):
        sys.modules.pop(name, None)


@pytest.fixture
def readme_adapter(modeling):
    exec(compile(readme_block("register_shape_adapter("), "README.md", "exec"), {"__name__": "readme_adapter"})
    yield
    SHAPE_ADAPTERS.pop("my_models.modeling.FusedAttention")


def prune_heads(model):
    tr = trace(meta_copy(model))
    groups = find_groups(tr)
    keep = make_plan(groups, "attention_head")
    pruned, record = execute(model, tr, groups, keep)
    return groups, keep, pruned.eval(), record


def assert_oracle(model, groups, keep, pruned):
    ids = torch.randint(0, 29, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(pruned(ids), masked_reference(model, groups, keep)(ids), atol=1e-5)


def test_without_an_adapter_per_layer_head_counts_cannot_be_inferred(modeling):
    # an attribute whose value differs between layers is never inferred (it could be layer_idx)
    with pytest.raises(AttributeInferenceError):
        prune_heads(modeling.TinyFused(heads=(4, 5)).eval())


def test_readme_adapter_runs_on_the_module_above_the_sliced_weights(readme_adapter, modeling):
    model = modeling.TinyFused(heads=(4, 5)).eval()
    groups, keep, pruned, record = prune_heads(model)
    assert [layer.num_heads for layer in pruned.layers] == [len(keep["attention_head@0"]), len(keep["attention_head@1"])]
    assert [layer.num_heads for layer in model.layers] == [4, 5]  # the input model is untouched
    assert_oracle(model, groups, keep, pruned)


def test_a_module_with_an_adapter_still_has_its_other_attributes_inferred(readme_adapter, modeling):
    # WideAttention inherits FusedAttention's adapter (by MRO), which sets num_heads, not inner
    model = modeling.TinyFused(heads=(4, 4), attention=modeling.WideAttention).eval()
    groups, keep, pruned, record = prune_heads(model)
    kept = [len(keep["attention_head@0"]), len(keep["attention_head@1"])]
    assert [layer.num_heads for layer in pruned.layers] == kept
    assert [layer.inner for layer in pruned.layers] == [2 * k for k in kept]
    assert {(path, attr) for path, attr, _ in record.attributes} == {("layers.0", "inner"), ("layers.1", "inner")}
    assert_oracle(model, groups, keep, pruned)


def test_attributes_an_adapter_owns_are_never_inferred(modeling):
    # nn.Embedding's adapter owns padding_idx, a token id: equal to the old hidden size here, it
    # must not follow the pruned hidden size (a re-trace could not tell, shapes do not depend on it)
    model = modeling.TinyFused(heads=(4, 5)).eval()
    model.embed.padding_idx = 14  # the hidden size
    tr = trace(meta_copy(model))
    groups = find_groups(tr)
    keep = {"hidden_channel@all": [0, 1, 2, 4, 6, 7, 9, 10, 12, 13]}
    pruned, record = execute(model, tr, groups, keep)
    assert pruned.embed.embedding_dim == 10 and pruned.embed.padding_idx == 14
    assert record.attributes == []
    assert_oracle(model, groups, keep, pruned.eval())  # no norm: removing hidden channels is masking them
