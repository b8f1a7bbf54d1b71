"""benchmarks/serve_vllm.py: pruned models served by vLLM, compared with transformers.

vLLM pins transformers < 5.20, so it normally lives in a venv of its own (the script builds one)
and is not importable here: the serving test is then skipped, and says so.  The parts that run
in depprune's environment (making and scoring the cases, the report) are tested either way.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serve_vllm.py"


def load_script():
    spec = importlib.util.spec_from_file_location("serve_vllm", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.shared
def test_cases_are_made_and_scored_by_transformers(tmp_path):
    mod = load_script()
    cases = mod.make_cases(tmp_path)
    made = {(c["arch"], c["mode"]): c for c in cases}
    assert set(made) == {(a, m) for a in ("llama", "qwen2", "phi3") for m in mod.MODES}
    assert all("out" in c for c in cases)  # every mode makes a model for these shapes
    assert not made["llama", "aligned"]["remote_code"] and made["llama", "per_layer"]["remote_code"]
    assert made["qwen2", "per_layer"]["per_layer_config"]
    for c in cases:  # log p of every prompt token after the first, all negative
        assert [len(lp) for lp in c["transformers"]] == [len(p) - 1 for p in mod.PROMPTS]
        assert all(x < 0 for lp in c["transformers"] for x in lp)
    row = mod.report([{**made["llama", "uniform"], "max_abs_diff": 4.6e-7}])
    assert "| llama | uniform |" in row and "| served | 4.6e-07 |" in row


@pytest.mark.slow
def test_the_script_serves_with_vllm_when_it_is_importable(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed in this environment (serve_vllm.py gives it its own venv)")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--venv", sys.prefix, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "serve_vllm.json").read_text())
    served = [r for r in rows if "max_abs_diff" in r]
    assert served and all(r["max_abs_diff"] < 1e-4 for r in served)
