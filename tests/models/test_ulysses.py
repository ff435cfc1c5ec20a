"""Ulysses attention (models/ulysses.py) over 2 and 4 gloo ranks computes what full attention computes on whole rows
in one process, forward and gradients: plain causal rows, grouped key heads fewer than the ranks (repeated for the
exchange), packed rows of several samples, SDPA and eager, and a whole two-layer Llama (rotary positions of each
shard, the packed mask rebuilt from the gathered position ids). One torchrun of 4 processes checks every case."""

import json
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("ulysses_worker.py")


def test_ulysses_attention_equals_full_attention_on_2_and_4_ranks(tmp_path, xtune_env):
    out = tmp_path / "diffs.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=4", "--standalone", str(WORKER)]
    result = subprocess.run([*command, str(out)], capture_output=True, text=True, timeout=240, env=xtune_env)
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = json.loads(out.read_text())
    assert len(diffs) == 20  # 2 group sizes x 2 implementations x (4 attention cases + the Llama)
    assert {case: d for case, d in diffs.items() if not d < 1e-5} == {}
