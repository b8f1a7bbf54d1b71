"""Size-carrying module attributes: update them after slicing, and prove the update right.

Two mechanisms:

1. **Shape adapters** -- a small registry from module class to a function that re-derives
   its size attributes from its (already sliced) weights: ``nn.Linear``, ``nn.Embedding``,
   ``nn.LayerNorm`` and transformers' ``Conv1D`` are built in.  This is the extension point
   for a new architecture whose module stores sizes in a way the search below cannot find::

       from pruners.slicing.attributes import register_shape_adapter

       @register_shape_adapter("my_models.FusedQKV")
       def _fused_qkv(module):
           module.q_size = module.weight.shape[0] // 3

   An adapter runs, after slicing, on every module of its class (or a subclass) that holds a
   sliced tensor anywhere below it -- the tensor's owner or any module above it --, deepest
   modules first, so it may read its children's updated sizes.

2. **Inferred attributes** -- any other ``int`` attribute of a module (or field of its
   ``config``) whose value equals the old size of a pruned structure in the module's
   parameters (heads, KV heads, a fused segment, the hidden size) is a candidate.  An
   attribute whose value differs between layers (``layer_idx``) never is, and neither is one
   an adapter set (it changed the value, or names it in ``owns``).  Choices are made per
   attribute name across layers; only modules that own a sliced parameter, or whose direct
   children do, are considered.  When structures of equal old size change differently (GPT-2's
   ``split_size`` is both the hidden size and ``heads * head_dim``; with hidden channels and
   heads pruned only the latter is right), each is a choice of its own, told apart by where it
   sits in the layouts.  The pruned model is then **re-traced**: its layouts must equal the
   expected ones, or the next choice is tried.  Nothing unverified is returned.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from torch import nn

from depgraph.layout import Cat, Factor, Prod, resolve
from depgraph.tracer import Trace, meta_copy, trace

from ..errors import PlanError
from .sized_modeling import resize_to_record

ShapeAdapter = Callable[[nn.Module], None]


@dataclass(frozen=True)
class AdapterSpec:
    """A registered shape adapter and the attributes it answers for even when it keeps their value."""

    fn: ShapeAdapter
    owns: frozenset[str] = frozenset()


SHAPE_ADAPTERS: dict[str, AdapterSpec] = {}


class AttributeInferenceError(PlanError, RuntimeError):
    """No assignment of size attributes reproduces the expected pruned layouts: the plan cannot be executed."""


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_shape_adapter(cls: type | str, owns: Iterable[str] = ()) -> Callable[[ShapeAdapter], ShapeAdapter]:
    """Register ``fn(module)`` that updates size attributes of modules of class ``cls`` (a class or
    its qualified name) from their sliced weights.

    It runs on every module of that class or a subclass with a sliced tensor anywhere below it.
    Inference leaves alone the attributes it changes, and those named in ``owns`` (ones it may
    keep as they are); the module's other attributes are still inferred.
    """
    key = cls if isinstance(cls, str) else _qualname(cls)

    def deco(fn: ShapeAdapter) -> ShapeAdapter:
        SHAPE_ADAPTERS[key] = AdapterSpec(fn, frozenset(owns))
        return fn

    return deco


def shape_adapter_for(module: nn.Module) -> AdapterSpec | None:
    """The adapter registered for the nearest class in ``module``'s MRO, if any."""
    for cls in type(module).__mro__:
        spec = SHAPE_ADAPTERS.get(_qualname(cls))
        if spec is not None:
            return spec
    return None


@register_shape_adapter(nn.Linear, owns=("out_features", "in_features"))
def _linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_shape_adapter(nn.Embedding, owns=("num_embeddings", "embedding_dim", "padding_idx"))  # padding_idx: a token id
def _embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@register_shape_adapter(nn.LayerNorm, owns=("normalized_shape",))
def _layer_norm(m: nn.LayerNorm) -> None:
    ref = m.weight if m.weight is not None else m.bias
    if ref is not None:
        m.normalized_shape = tuple(ref.shape)


@register_shape_adapter("transformers.pytorch_utils.Conv1D", owns=("nx", "nf"))
def _conv1d(m: nn.Module) -> None:
    m.nx, m.nf = m.weight.shape


def apply_shape_adapters(model: nn.Module, touched: Iterable[str]) -> set[tuple[str, str]]:
    """Run the shape adapter of every module holding a sliced tensor: its owner or any module above it.

    Deepest modules first (``a.b.qkv`` before ``a.b``), so an adapter reads its children's new
    sizes.  Returns the ``(module path, attribute)`` pairs the adapters set -- changed, or
    named in ``owns`` --, which :func:`infer_attributes` leaves alone.
    """
    holders: set[str] = set()
    for name in touched:
        parts = name.split(".")[:-1]
        holders.update(".".join(parts[:i]) for i in range(len(parts) + 1))  # "" is the model itself
    fixed: set[tuple[str, str]] = set()
    for path in sorted(holders, key=lambda p: (-(p.count(".") + bool(p)), p)):
        mod = model.get_submodule(path) if path else model
        spec = shape_adapter_for(mod)
        if spec is None:
            continue
        before = _int_attrs(mod)
        spec.fn(mod)
        after = _int_attrs(mod)
        fixed |= {(path, a) for a in spec.owns | {a for a in before.keys() | after.keys() if before.get(a) != after.get(a)}}
    return fixed


# -- expected layouts -------------------------------------------------------------------------


def signature(t, new_size: Mapping[Factor, int]) -> tuple:
    """The layout of ``t`` with pruned factor sizes substituted, as nested tuples of sizes."""
    t = resolve(t)
    if isinstance(t, Factor):
        n = new_size.get(t, t.size)
        return ("F", n)
    kids = [signature(c, new_size) for c in t.children]
    if isinstance(t, Prod):
        flat = []
        for k in kids:
            if k == ("F", 1):
                continue
            flat.extend(k[1] if k[0] == "P" else [k])
        return flat[0] if len(flat) == 1 else ("P", tuple(flat)) if flat else ("F", 1)
    flat = []
    for k in kids:
        if k == ("F", 0):
            continue
        flat.extend(k[1] if k[0] == "C" else [k])
    return flat[0] if len(flat) == 1 else ("C", tuple(flat))


def sig_size(sig: tuple) -> int:
    if sig[0] == "F":
        return sig[1]
    sizes = [sig_size(c) for c in sig[1]]
    if sig[0] == "P":
        out = 1
        for s in sizes:
            out *= s
        return out
    return sum(sizes)


def quantities(t, new_size: Mapping[Factor, int]) -> set[tuple[int, int]]:
    """(old, new) sizes a module could store for a layout: factors, runs of a product, segments.

    Inside a product only whole children count (the RoPE halves inside a head dim do not).
    """
    return {(o, n) for _, o, n in placed_quantities(t, new_size)}


def placed_quantities(t, new_size: Mapping[Factor, int], place: tuple = ()) -> Iterator[tuple[tuple, int, int]]:
    """The :func:`quantities` of ``t`` as ``(place, old, new)``: ``place`` says where in the layout each sits.

    A place is a path of child indices (``(i, j)`` for the run of product children ``i..j``), the
    same in every layer of a model, so two structures of equal old size (the hidden size and
    ``heads * head_dim``) stay apart when both are pruned.
    """
    t = resolve(t)
    if isinstance(t, Factor):
        yield place, t.size, new_size.get(t, t.size)
        return
    if isinstance(t, Cat):
        yield place, _old(t), _new(t, new_size)
        for i, c in enumerate(t.children):
            yield from placed_quantities(c, new_size, (*place, i))
        return
    olds = [_old(c) for c in t.children]
    news = [_new(c, new_size) for c in t.children]
    for i in range(len(olds)):
        o = n = 1
        for j in range(i, len(olds)):
            o *= olds[j]
            n *= news[j]
            yield (*place, (i, j)), o, n
    for i, c in enumerate(t.children):
        if isinstance(resolve(c), Prod):
            yield from placed_quantities(c, new_size, (*place, i))


def _old(t) -> int:
    from depgraph.layout import size

    return size(resolve(t))


def _new(t, new_size) -> int:
    return sig_size(signature(t, new_size))


# -- candidate attributes ---------------------------------------------------------------------


def relkey(path: str) -> str:
    """``path`` with its layer (and other) indices as ``*``: ``model.layers.3.mlp`` -> ``model.layers.*.mlp``."""
    return re.sub(r"(?:(?<=^)|(?<=\.))\d+(?=\.|$)", "*", path)


def _near(path: str, param: str, depth: int = 2) -> bool:
    """``param`` is owned by ``path`` or by one of its direct children."""
    prefix = f"{path}." if path else ""
    if not param.startswith(prefix):
        return False
    return param[len(prefix) :].count(".") < depth


def _int_attrs(mod: nn.Module) -> dict[str, int]:
    out = {k: v for k, v in vars(mod).items() if type(v) is int and v > 1 and not k.startswith("_")}
    cfg = getattr(mod, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict") and not isinstance(cfg, nn.Module):
        for k, v in vars(cfg).items():
            if type(v) is int and v > 1 and not k.startswith("_"):
                out[f"config.{k}"] = v
    return out


@dataclass(frozen=True)
class Candidate:
    """One module's int attribute that may carry a pruned size.

    ``options`` maps each place of a changed structure of old size ``value`` in the module's
    parameters (:func:`placed_quantities`, keyed by parameter and axis too) to its new size;
    ``stay`` says an unchanged structure has that size as well.
    """

    value: int
    options: Mapping[tuple, int]
    stay: bool

    @property
    def news(self) -> set[int]:
        return set(self.options.values())


def candidates(
    model: nn.Module, tr: Trace, new_size: Mapping[Factor, int], fixed: frozenset[tuple[str, str]] = frozenset()
) -> dict[tuple[str, str], dict[str, Candidate]]:
    """(relative module key, attribute) -> {module path: :class:`Candidate`}.

    ``(module path, attribute)`` pairs in ``fixed`` (set by a shape adapter) are no candidates.
    """
    per_param = {
        name: {(relkey(name), axis, place): (o, n) for axis, t in enumerate(info.axes) for place, o, n in placed_quantities(t, new_size)}
        for name, info in tr.params.items()
    }
    found: dict[tuple[str, str], dict[str, Candidate]] = {}
    values: dict[tuple[str, str], set[int]] = {}
    for path, mod in model.named_modules():
        # only modules that own the parameters or their direct children: the root's
        # ``config.eos_token_id == 2`` must never follow a pruned size that happens to be 2
        qs = {where: on for n, q in per_param.items() if _near(path, n) for where, on in q.items()}
        if all(o == n for o, n in qs.values()):
            continue
        for attr, v in _int_attrs(mod).items():
            if (path, attr) in fixed:
                continue
            values.setdefault((relkey(path), attr), set()).add(v)
            options = {where: n for where, (o, n) in qs.items() if o == v and n != v}
            if options:
                stay = any(o == v and n == v for o, n in qs.values())
                found.setdefault((relkey(path), attr), {})[path] = Candidate(v, options, stay)
    # an attribute whose value differs between layers (layer_idx) carries no size
    return {k: v for k, v in found.items() if len(values.get(k, ())) == 1}


def choices(per_path: Mapping[str, Candidate]) -> list[dict[str, int]]:
    """The ways to update one attribute across the modules that hold it: ``{module path: new value}``.

    One per place of a changed structure (the modules lacking it keep their value), and, when
    every module has a single new value, all of them together.  Duplicates are dropped.
    """
    out: list[dict[str, int]] = []
    if all(len(c.news) == 1 for c in per_path.values()):
        out.append({path: next(iter(c.news)) for path, c in per_path.items()})
    for where in sorted({w for c in per_path.values() for w in c.options}, key=repr):
        change = {path: c.options[where] for path, c in per_path.items() if where in c.options}
        if change not in out:
            out.append(change)
    return out


def set_attributes(model: nn.Module, changes: Iterable[tuple[str, str, int]]) -> None:
    """Apply ``(module path, attribute, value)`` changes; ``config.X`` gives the module its own config copy.

    The same code the generated modeling file runs (:func:`.sized_modeling.resize_to_record`).
    """
    resize_to_record(model, {"shapes": {}, "attributes": list(changes)})


def infer_attributes(
    model: nn.Module,
    tr: Trace,
    new_size: Mapping[Factor, int],
    fixed: Iterable[tuple[str, str]] = (),
    max_attempts: int = 32,
) -> list[tuple[str, str, int]]:
    """Update size attributes of the (sliced) ``model`` in place; return ``(path, attr, value)`` changes.

    Each candidate attribute keeps its value or takes one of its :func:`choices`.  The default
    changes an attribute only where its value matches just one changed structure, and no config
    field; assignments are tried closest to it first, at most ``max_attempts`` re-traces.
    ``fixed`` are the ``(module path, attribute)`` pairs the shape adapters set
    (:func:`apply_shape_adapters`): never changed here.  Raises :class:`AttributeInferenceError`
    if no tried assignment re-traces to the expected layouts.
    """
    expected = {name: tuple(signature(t, new_size) for t in info.axes) for name, info in tr.params.items()}
    cands = candidates(model, tr, new_size, frozenset(fixed))
    keys = sorted(cands)
    options = {k: [None, *choices(cands[k])] for k in keys}  # None: every module keeps its value
    # config fields start unchanged (a shared config holds token ids and the like); they change only if needed
    # (when every module has one new value and no unchanged structure of its size, choice 1 is all of them)
    default = {
        k: int(not k[1].startswith("config.") and all(not c.stay and len(c.news) == 1 for c in cands[k].values()))
        for k in keys
    }
    tried = 0
    last_error = ""
    for assignment in _assignments(keys, options, default):
        changes = [(path, attr, value) for (rk, attr), i in assignment.items() if i for path, value in options[(rk, attr)][i].items()]
        trial = meta_copy(model)
        set_attributes(trial, changes)
        tried += 1
        ok, last_error = verify_layouts(trial, expected)
        if ok:
            set_attributes(model, changes)
            return changes
        if tried >= max_attempts:
            break
    tried_what = ", ".join(f"{rk}.{a}={_value(cands[(rk, a)])}->{'|'.join(map(str, sorted(_news(cands[(rk, a)]))))}" for rk, a in keys)
    raise AttributeInferenceError(
        f"could not infer the size attributes of the pruned model: none of {tried} assignments"
        f"{' (the limit)' if tried >= max_attempts else ''} re-traces to the pruned layouts "
        f"(candidates: {tried_what or 'none'}; last mismatch: {' '.join(last_error.split())}). "
        "Register a shape adapter with pruners.slicing.attributes.register_shape_adapter for the module that stores sizes."
    )


def _value(per_path: Mapping[str, Candidate]) -> int:
    return next(iter(per_path.values())).value


def _news(per_path: Mapping[str, Candidate]) -> set[int]:
    return set().union(*(c.news for c in per_path.values()))


def _assignments(keys: list, options: Mapping, default: Mapping) -> Iterator[dict]:
    """Option indices per key, fewest departures from ``default`` first.

    Attributes kept by default are departed from first, module attributes before config fields,
    and those of deeper modules (nearer the weights that read the size) before those above them.
    """
    order = sorted(keys, key=lambda k: (bool(default[k]), k[1].startswith("config."), -k[0].count(".") - bool(k[0])))
    for r in range(len(order) + 1):
        for departing in itertools.combinations(order, r):
            alternatives = [[i for i in range(len(options[k])) if i != default[k]] for k in departing]
            for picked in itertools.product(*alternatives):
                yield {**default, **dict(zip(departing, picked))}


def verify_layouts(model: nn.Module, expected: Mapping[str, tuple]) -> tuple[bool, str]:
    """Re-trace ``model``: do its parameter layouts equal ``expected`` (sizes and structure)?"""
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)  # a rejected assignment fails inside fake-tensor shape checks
    try:
        tr = trace(model)
    except Exception as e:  # any failure to trace means this assignment is wrong
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    finally:
        fake_log.setLevel(level)
    for name, sigs in expected.items():
        if name not in tr.params:
            return False, f"{name} missing"
        got = tuple(signature(t, {}) for t in tr.params[name].axes)
        if _canon(got) != _canon(sigs):
            return False, f"{name}: expected {sigs}, traced {got}"
    return True, ""


def _canon(sigs: tuple) -> tuple:
    """Compare layouts up to how free factors happen to be split (``Cat(F4, F4)`` vs ``F8``)."""
    return tuple(_leaves(s) for s in sigs)


def _leaves(sig: tuple) -> tuple:
    if sig[0] == "F":
        return ("F", sig[1])
    if sig[0] == "C":
        return ("F", sig_size(sig)) if all(c[0] == "F" for c in sig[1]) else ("C", tuple(_leaves(c) for c in sig[1]))
    return ("P", tuple(_leaves(c) for c in sig[1]))
