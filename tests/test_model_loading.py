"""Loading a model never runs foreign code, never unpickles and never yields garbage.

Every bad model directory (custom code, pickled or corrupt weights, configs that disagree with the
weights or with themselves, NaN weights, dangling links) is refused with one line naming the file or
tensor, as :class:`~pruners.errors.ModelSourceError` (or :class:`~pruners.errors.NonFiniteError`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pruners.errors import ModelSourceError, NonFiniteError
from pruners.io.checkpoint import check_weights, has_weights, load_model, load_tokenizer

from zoo import MODELS, STORIES, tiny_llama

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["stories260K", "stories260K-mistral", "stories260K-qwen2", "stories260K-phi3"]
IDS = torch.randint(3, 500, (2, 25), generator=torch.Generator().manual_seed(0))

pytestmark = pytest.mark.shared


def copy_model(src: Path, dst: Path) -> Path:
    """A writable copy of a (read-only) model directory."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("llama2c_original", "SOURCE.md"),
                    copy_function=shutil.copyfile)
    for root, dirs, _ in os.walk(dst):
        for d in dirs:
            os.chmod(Path(root) / d, 0o755)
    os.chmod(dst, 0o755)
    return dst


def edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


_DROP = object()


def refusal(exc_type=ModelSourceError, **kw) -> pytest.ExceptionInfo:
    return pytest.raises(exc_type, **kw)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text.strip(), text
    return text


@pytest.fixture
def stories(tmp_path) -> Path:
    return copy_model(STORIES, tmp_path / "stories")


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def as_depprune_output(d: Path) -> Path:
    """Turn a plain HF directory into one with a ``depprune`` record (an empty prune: same shapes),
    so that load_model takes its own ``_load_state`` path."""
    cfg = json.loads((d / "config.json").read_text())
    cfg["depprune"] = {"format": 1, "hf_loadable": True,
                       "record": {"shapes": {}, "attributes": [], "kept": {}, "config": None}}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


# -- 1. custom modelling code runs only with trust_remote_code=True ------------------------------

EVIL_CONFIG = """
from pathlib import Path
Path({sentinel!r}).write_text("configuration imported")
from transformers import LlamaConfig

class EvilConfig(LlamaConfig):
    model_type = "evil"
"""

EVIL_MODEL = """
from pathlib import Path
Path({sentinel!r}).write_text("modelling imported")
from transformers import LlamaForCausalLM
from .configuration_evil import EvilConfig

class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""

EVIL_TOKENIZER = """
from pathlib import Path
Path({sentinel!r}).write_text("tokenizer imported")
from transformers import PreTrainedTokenizerFast

class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""

AUTO_MAP = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}


def evil_dir(tmp_path: Path, model_type="evil", auto_map=AUTO_MAP) -> tuple[Path, Path]:
    d = copy_model(STORIES, tmp_path / "evil")
    sentinel = tmp_path / "SENTINEL"
    (d / "configuration_evil.py").write_text(EVIL_CONFIG.format(sentinel=str(sentinel)))
    (d / "modeling_evil.py").write_text(EVIL_MODEL.format(sentinel=str(sentinel)))
    edit_config(d, model_type=model_type, auto_map=auto_map if auto_map is not None else _DROP,
                architectures=["EvilForCausalLM"])
    return d, sentinel


@pytest.mark.parametrize(
    "model_type,auto_map,says",
    [("evil", AUTO_MAP, "auto_map"), ("llama", AUTO_MAP, "auto_map"), ("evil", None, "'evil'")],
    ids=["auto_map+custom_type", "auto_map+builtin_type", "unknown_type"],
)
@pytest.mark.parametrize("weights", [True, False])
def test_custom_code_is_never_run_without_trust(tmp_path, model_type, auto_map, says, weights):
    d, sentinel = evil_dir(tmp_path, model_type, auto_map)
    with refusal() as e:
        load_model(d, weights=weights)
    msg = one_line(e)
    assert "custom modelling code" in msg and says in msg and "--trust-remote-code" in msg, msg
    assert str(d / "config.json") in msg
    assert not sentinel.exists()


def _run(code: str, env_extra: dict, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env_extra)
    return subprocess.run([sys.executable, *code], input=stdin, capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def test_custom_code_runs_with_trust(tmp_path):
    d, sentinel = evil_dir(tmp_path)
    code = ["-c", "import sys; from pruners.io.checkpoint import load_model; "
            "m = load_model(sys.argv[1], weights=False, trust_remote_code=True); print(type(m).__name__)", str(d)]
    r = _run(code, {"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "EvilForCausalLM"
    assert sentinel.exists()


def test_cli_inspect_never_runs_custom_code_even_with_yes_on_stdin(tmp_path):
    d, sentinel = evil_dir(tmp_path)
    r = _run(["-m", "pruners.cli", "inspect", "--model", str(d)], {"HF_MODULES_CACHE": str(tmp_path / "modules")},
             stdin="y\n" * 10)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "custom modelling code" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not sentinel.exists()


def test_tokenizer_custom_code_is_never_run_without_trust(tmp_path):
    d = copy_model(STORIES, tmp_path / "tok")
    sentinel = tmp_path / "SENTINEL"
    (d / "tokenization_evil.py").write_text(EVIL_TOKENIZER.format(sentinel=str(sentinel)))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with refusal() as e:
        load_tokenizer(d)
    msg = one_line(e)
    assert "custom" in msg and "auto_map" in msg and "--trust-remote-code" in msg and "tokenizer_config.json" in msg
    assert not sentinel.exists()


def test_tokenizer_loads_and_broken_tokenizers_are_one_line(tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer(STORIES)
    assert tok("Once upon a time").input_ids == AutoTokenizer.from_pretrained(STORIES)("Once upon a time").input_ids
    d = copy_model(STORIES, tmp_path / "tok")
    (d / "tokenizer.json").write_bytes(b"\x00garbage{")
    with refusal() as e:
        load_tokenizer(d)
    assert str(d) in one_line(e)
    (d / "tokenizer_config.json").write_text("[1, 2")
    with refusal(match="tokenizer_config.json") as e:
        load_tokenizer(d)
    one_line(e)
    with refusal(match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


# -- 2. pickles are never read ---------------------------------------------------------------------


class _Trap:
    """Unpickling this creates the sentinel file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_pickled_weights_are_refused_never_unpickled(tmp_path, layout):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copyfile(STORIES / "config.json", d / "config.json")
    sentinel = tmp_path / "SENTINEL"
    if layout == "single":
        names = ["pytorch_model.bin"]
    else:
        names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
        (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": names[0], "b": names[1]}}))
    for n in names:
        (d / n).write_bytes(pickle.dumps({"model.embed_tokens.weight": _Trap(str(sentinel))}))
    assert not has_weights(d)
    with refusal() as e:
        load_model(d)
    msg = one_line(e)
    assert "holds only pickled weights" in msg and names[0] in msg and "safetensors" in msg and "convert" in msg
    with refusal(match="pickled"):
        check_weights(d)
    load_model(d, weights=False)  # the structure alone is still fine (inspect)
    assert not sentinel.exists()


def test_safetensors_next_to_pickles_is_fine(stories):
    (stories / "pytorch_model.bin").write_bytes(b"not even a pickle")
    assert has_weights(stories)
    assert torch.equal(logits(load_model(stories)), logits(load_model(STORIES)))


# -- 3. corrupt safetensors ------------------------------------------------------------------------


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    header, data = _header(path)
    name = next(k for k in header if k != "__metadata__")
    if how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "random_bytes":
        path.write_bytes(os.urandom(4096))
    elif how == "header_too_long":
        path.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    elif how == "header_not_json":
        h = b"{not json" + b" " * 40
        path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    elif how == "header_not_object":
        _write(path, [1, 2, 3], data)
    elif how == "offsets_outside":
        header[name]["data_offsets"] = [0, len(data) + 100]
        _write(path, header, data)
    elif how == "shape_mismatch":
        header[name]["shape"] = [s + 1 for s in header[name]["shape"]]
        _write(path, header, data)
    elif how == "bad_dtype":
        header[name]["dtype"] = "F33"
        _write(path, header, data)
    elif how == "extra_data":
        _write(path, header, data + b"\x00" * 64)
    else:
        raise AssertionError(how)


CORRUPTIONS = ["zero_bytes", "truncated", "random_bytes", "header_too_long", "header_not_json", "header_not_object",
               "offsets_outside", "shape_mismatch", "bad_dtype", "extra_data"]


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("kind", ["hf", "depprune"])
def test_corrupt_safetensors_is_one_line(stories, how, kind):
    if kind == "depprune":
        as_depprune_output(stories)
    _corrupt(stories / "model.safetensors", how)
    with refusal() as e:
        load_model(stories)
    msg = one_line(e)
    assert msg.startswith(f"not a valid safetensors file: {stories / 'model.safetensors'} ("), msg


@pytest.mark.parametrize("kind", ["hf", "depprune"])
def test_valid_safetensors_without_tensors_is_not_a_model(stories, kind):
    if kind == "depprune":
        as_depprune_output(stories)
    _write(stories / "model.safetensors", {"__metadata__": {"format": "pt"}}, b"")
    with refusal() as e:
        load_model(stories)
    assert "missing" in one_line(e) or "hold no tensors" in one_line(e)


@pytest.fixture(scope="module")
def tiny_sharded(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "sharded"
    tiny_llama(vocab_size=64).save_pretrained(d, max_shard_size="4KB")
    assert (d / "model.safetensors.index.json").is_file() and len(list(d.glob("model-*.safetensors"))) > 1
    return d


def test_sharded_model_loads(tiny_sharded):
    from transformers import AutoModelForCausalLM

    ids = IDS % 64
    assert torch.equal(logits(load_model(tiny_sharded), ids),
                       logits(AutoModelForCausalLM.from_pretrained(tiny_sharded).eval(), ids))
    assert len(check_weights(tiny_sharded)) == 2 * 9 + 2 + 1  # 9 per layer, embeddings, final norm, lm_head


def _index_missing_shard(d):
    next(iter(sorted(d.glob("model-*.safetensors")))).unlink()


def _index_not_json(d):
    (d / "model.safetensors.index.json").write_text('{"weight_map": ')


def _index_no_weight_map(d):
    (d / "model.safetensors.index.json").write_text('{"metadata": {}}')


def _index_escapes(d):
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    k = next(iter(idx["weight_map"]))
    idx["weight_map"][k] = "../elsewhere.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _index_wrong_shard(d):
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(idx["weight_map"].values()))
    k = next(k for k, v in idx["weight_map"].items() if v == shards[0])
    idx["weight_map"][k] = shards[1]  # names a shard that does not hold the tensor
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _shard_corrupt(d):
    next(iter(sorted(d.glob("model-*.safetensors")))).write_bytes(b"\x01\x02")


@pytest.mark.parametrize("damage,says", [
    (_index_missing_shard, "does not exist"), (_index_not_json, "not valid JSON"), (_index_no_weight_map, "weight_map"),
    (_index_escapes, "elsewhere"), (_index_wrong_shard, "does not hold"), (_shard_corrupt, "model-0000"),
])
@pytest.mark.parametrize("kind", ["hf", "depprune"])
def test_broken_sharded_index_is_one_line(tiny_sharded, tmp_path, damage, says, kind):
    d = copy_model(tiny_sharded, tmp_path / "m")
    if kind == "depprune":
        as_depprune_output(d)
    damage(d)
    with refusal() as e:
        load_model(d)
    msg = one_line(e)
    assert msg.startswith("not a valid safetensors file: ") and says in msg, msg


# -- 4. config.json and the weights must agree ----------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_models_load_as_before(variant):
    """Same logits as transformers' own loader (what load_model used before these checks); tied lm_head and
    non-persistent rotary buffers are not reported."""
    from transformers import AutoModelForCausalLM

    model = load_model(MODELS / variant)
    plain = AutoModelForCausalLM.from_pretrained(MODELS / variant, dtype=torch.float32).eval()
    assert torch.equal(logits(model), logits(plain))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_depprune_output_with_tied_weights_loads(stories):
    as_depprune_output(stories)
    assert torch.equal(logits(load_model(stories)), logits(load_model(STORIES)))


@pytest.mark.parametrize("kind", ["hf", "depprune"])
@pytest.mark.parametrize("change,says", [
    ({"num_hidden_layers": 7}, "missing 18 tensors (model.layers.5."),
    ({"num_hidden_layers": 3}, "unexpected 18 tensors (model.layers.3."),
    ({"intermediate_size": 100}, "mismatched shapes"),
])
def test_config_weights_mismatch_names_the_tensors(stories, kind, change, says, capfd):
    edit_config(stories, **change)
    if kind == "depprune":
        as_depprune_output(stories)
    with refusal() as e:
        load_model(stories)
    msg = one_line(e)
    assert says in msg and "config.json" in msg, msg
    assert msg.count("model.layers.") <= 5, msg  # at most 5 names
    assert "LOAD REPORT" not in capfd.readouterr().err  # transformers' table is read, not printed


# -- 5. configs that contradict themselves ---------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("num_key_value_heads", 3), ("hidden_size", 0), ("intermediate_size", -4), ("num_hidden_layers", 2.5),
    ("num_attention_heads", "8"), ("num_key_value_heads", True), ("head_dim", 0), ("vocab_size", -1),
    ("max_position_embeddings", 0), ("num_attention_heads", 0),
])
@pytest.mark.parametrize("weights", [False, True])
def test_inconsistent_config_names_field_and_value(stories, field, value, weights):
    edit_config(stories, **{field: value})
    with refusal() as e:
        load_model(stories, weights=weights)
    msg = one_line(e)
    assert field in msg and repr(value) in msg and str(stories / "config.json") in msg, msg


@pytest.mark.parametrize("text,says", [
    ("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"), ('{"hidden_size": 4}', "model_type"),
    ('{"model_type": 7}', "model_type"), ("", "not valid JSON"), ("\xff\xfe", "not valid"),
])
@pytest.mark.parametrize("weights", [False, True])
def test_unreadable_config_is_one_line(stories, text, says, weights):
    (stories / "config.json").write_text(text, encoding="latin-1")
    with refusal() as e:
        load_model(stories, weights=weights)
    msg = one_line(e)
    assert says in msg and "config.json" in msg, msg


@pytest.mark.parametrize("change", [{"hidden_act": "no_such_activation"}, {"rope_parameters": {"rope_type": "bogus"}},
                                    {"rope_parameters": 5}])
@pytest.mark.parametrize("weights", [False, True])
def test_transformers_failures_are_one_line(stories, change, weights):
    edit_config(stories, **change)
    with refusal() as e:
        load_model(stories, weights=weights)
    msg = one_line(e)
    assert msg.startswith("transformers cannot "), msg
    assert str(stories) in msg


# -- 6. NaN / Inf weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hf", "depprune"])
def test_nonfinite_weights_are_refused_unless_allowed(stories, kind):
    from safetensors.torch import load_file, save_file

    state = load_file(stories / "model.safetensors")
    w = state["model.layers.1.mlp.up_proj.weight"]
    w[0, :3] = float("nan")
    w[1, 0] = float("inf")
    state["model.norm.weight"][5] = float("-inf")
    save_file(state, stories / "model.safetensors", metadata={"format": "pt"})
    if kind == "depprune":
        as_depprune_output(stories)
    with refusal(NonFiniteError) as e:
        load_model(stories)
    msg = one_line(e)
    assert "model.layers.1.mlp.up_proj.weight (4 of 11008" in msg and "model.norm.weight (1 of 64" in msg, msg
    assert "2 tensors" in msg and "--allow-nonfinite" in msg
    model = load_model(stories, allow_nonfinite=True)
    assert torch.isnan(model.model.layers[1].mlp.up_proj.weight).sum() == 3


# -- 7. symbolic links -------------------------------------------------------------------------------


def test_symlinks(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(STORIES, target_is_directory=True)
    assert torch.equal(logits(load_model(link)), logits(load_model(STORIES)))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    for path in (dangling, dangling / "sub"):
        with refusal() as e:
            load_model(path)
        msg = one_line(e)
        assert "does not exist (dangling symbolic link to" in msg and str(tmp_path / "gone") in msg, msg
    d = copy_model(STORIES, tmp_path / "m")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to(tmp_path / "blob")
    with refusal() as e:
        load_model(d)
    assert "dangling symbolic link" in one_line(e)
    (d / "config.json").unlink()
    (d / "config.json").symlink_to(tmp_path / "cfg")
    with refusal() as e:
        load_model(d, weights=False)
    assert "dangling symbolic link" in one_line(e)


# -- property tests: random bytes and random JSON are accepted or refused, never a crash -----------

DTYPES = ["F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F64", "I8", "F8_E4M3", "X", ""]
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=8)
_entry = st.fixed_dictionaries(
    {"dtype": st.sampled_from(DTYPES),
     "shape": st.lists(st.integers(0, 6), max_size=3) | _json,
     "data_offsets": st.lists(st.integers(-2, 200), min_size=2, max_size=2) | _json},
)
_headers = st.dictionaries(st.text(min_size=1, max_size=8), _entry | _json, max_size=4)


def _file(header_bytes: bytes, data: bytes, declared: int | None = None) -> bytes:
    n = len(header_bytes) if declared is None else declared
    return struct.pack("<Q", n) + header_bytes + data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300) | st.builds(_file, st.binary(max_size=60), st.binary(max_size=60),
                                                 st.none() | st.integers(0, 2**64 - 1)))
def test_header_check_on_random_bytes(raw):
    from pruners.io.model_files import parse_safetensors_header

    try:
        parse_safetensors_header(io.BytesIO(raw), len(raw), "f.safetensors")
    except ModelSourceError as e:
        assert "\n" not in str(e) and str(e).startswith("not a valid safetensors file: f.safetensors (")


_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1, "F64": 8, "I8": 1, "F8_E4M3": 1}


@st.composite
def _files(draw):
    """Valid safetensors files, then (usually) one mutation: some are still valid, most are not."""
    tensors = draw(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.sampled_from(sorted(_SIZES)),
                                      st.lists(st.integers(0, 4), max_size=3)), max_size=4, unique_by=lambda t: t[0]))
    header, cursor = {}, 0
    for name, dtype, shape in tensors:
        n = _SIZES[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [cursor, cursor + n]}
        cursor += n
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, None, {"a": 1}, [], "x"]))
    data_len = cursor
    mutation = draw(st.sampled_from(["none", "dtype", "shape", "offset", "data", "entry", "order"]))
    names = [k for k in header if k != "__metadata__"]
    if mutation == "data":
        data_len = max(0, cursor + draw(st.integers(-3, 3)))
    elif names and mutation != "none":
        victim = header[draw(st.sampled_from(names))]
        if mutation == "dtype":
            victim["dtype"] = draw(st.sampled_from(DTYPES))
        elif mutation == "shape":
            victim["shape"] = draw(st.lists(st.integers(-1, 4), max_size=3) | _json)
        elif mutation == "offset":
            i = draw(st.integers(0, 1))
            victim["data_offsets"][i] += draw(st.integers(-2, 2))
        elif mutation == "entry":
            victim.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])))
        else:
            header = dict(reversed(list(header.items())))  # order of the keys never matters
    h = json.dumps(header).encode() + b" " * draw(st.integers(0, 2))
    return _file(h, bytes(data_len))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_files() | st.builds(lambda h, n: _file(json.dumps(h).encode(), bytes(n)), _headers, st.integers(0, 64)))
def test_header_check_agrees_with_safetensors(raw):
    """What the check accepts, safetensors reads with the same shapes; what it refuses, safetensors refuses too."""
    from safetensors.torch import load as st_load

    from pruners.io.model_files import parse_safetensors_header

    try:
        tensors = parse_safetensors_header(io.BytesIO(raw), len(raw), "f.safetensors")
    except ModelSourceError as e:
        assert "\n" not in str(e)
        with pytest.raises(Exception):  # noqa: B017 -- safetensors raises its own SafetensorError
            st_load(raw)
        return
    loaded = st_load(raw)
    assert {k: tuple(v.shape) for k, v in loaded.items()} == {k: shape for k, (_, shape) in tensors.items()}


_size_fields = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"]
_small = st.integers(-2, 40) | st.sampled_from([0.5, 8.0, "8", True, None, [], [8, 8], {}])


@settings(max_examples=200, deadline=None)
@given(raw=_json | st.dictionaries(st.sampled_from(_size_fields + ["model_type", "auto_map"]), _json | _small))
def test_config_check_on_random_json(raw):
    from pruners.io.model_files import check_config_dict

    try:
        check_config_dict(raw, "config.json")
    except ModelSourceError as e:
        assert "\n" not in str(e) and "config.json" in str(e)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(_size_fields), _small, min_size=1, max_size=3))
def test_meta_build_of_random_configs(tmp_path, changes):
    """Through transformers too: a model on meta, or one line -- never another exception."""
    d = tmp_path / "cfg"
    d.mkdir(exist_ok=True)
    cfg = json.loads((STORIES / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        load_model(d, weights=False)
    except ModelSourceError as e:
        assert "\n" not in str(e)
