"""`training.compile: auto`: compile only where it pays. torch.compile makes each step faster (1.7x on the small
benchmark model on CPU) after a one-time cost (15-25 s cold on 2 CPU cores, seconds from inductor's cache), so on
a short run it costs more than it saves (50 steps: ~3x slower than eager, docs/benchmarks.md). `auto` compiles when
the time it would save over the steps left clearly exceeds what compiling costs:

    steps left x eager step time x (1 - 1 / speedup)  >  MARGIN x compile cost

The eager step time is measured on the run's first steps (the fastest of three, after the first); the compile
cost and the speedup are those measured by an earlier run of the same shapes (kept per shape signature in xtune's
cache dir, compile_costs.json), else the priors below. Where an earlier run measured this signature, the decision
is taken before the first step. `true` and `false` always and never compile. Inductor keeps its compiled graphs
across runs (its FX graph and AOTAutograd caches, on by default: $TORCHINDUCTOR_CACHE_DIR, else
/tmp/torchinductor_$USER), so a second run of the same shapes compiles from them in seconds, and records that
lower cost for the next.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xtune.errors import XtuneError
from xtune.io import user_cache_dir, write_text_atomically

COSTS_FILE = "compile_costs.json"
# A cold compile of the layers and the loss: 15-25 s for the small benchmark model packed on an idle 2-core box,
# 188 s for a 32k-vocabulary model unpacked (new shapes recompile) on a loaded one: on the side of not compiling.
PRIOR_COMPILE_S = 60.0
PRIOR_SPEEDUP = 1.5  # per step, compiled vs eager: 1.7x (small LoRA), 1.3-1.5x on larger models (benchmarks.md)
MARGIN = 2.0  # "clearly exceeds": a misestimate of up to 2x still never makes a run slower
EAGER_STEPS = 3  # eager steps timed (after the first, which warms up) before an undecided run decides
COMPILED_STEPS = 6  # compiled steps timed after the switch: the first ones compile, the last half are steady


@dataclass
class Costs:
    """What an earlier run measured for a shape signature (seconds)."""

    eager_step_s: float | None = None
    compiled_step_s: float | None = None
    compile_s: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.eager_step_s and self.compiled_step_s:
            return self.eager_step_s / self.compiled_step_s
        return None


def should_compile(steps_left: int, eager_step_s: float, costs: Costs) -> tuple[bool, str]:
    """The decision and why, from the eager step time and an earlier run's costs (the priors where it has none)."""
    compile_s = PRIOR_COMPILE_S if costs.compile_s is None else costs.compile_s
    speedup = costs.speedup or PRIOR_SPEEDUP
    saved = steps_left * eager_step_s * (1 - 1 / speedup) if speedup > 1 else 0.0
    source = "measured before for these shapes" if costs.compile_s is not None else "not measured yet: the priors"
    compiles = saved > MARGIN * compile_s
    reason = (
        f"{steps_left} steps left at {eager_step_s:.3g} s/step eager; compiling would save ~{saved:.0f} s at "
        f"{speedup:.2f}x per step against ~{compile_s:.0f} s to compile ({source}), "
        f"{'over' if compiles else 'not over'} {MARGIN:g}x that cost"
    )
    return compiles, reason


def shape_signature(model: torch.nn.Module, settings: dict) -> str:
    """What decides the compiled graphs and their cost: the model's architecture (its config), the
    run's `settings` that change shapes or kernels (method, LoRA, dtype, max length, batch, packing, precision,
    checkpointing), torch's version and the machine's threads."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    key = {"model": config, **settings, "torch": torch.__version__, "threads": torch.get_num_threads()}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class CompileChoice:
    """training.compile for one run: decided at setup (true, false, or auto with this signature measured before),
    else after the first eager steps. The recipe asks `at_setup()` once and reports each step to `step_done()`,
    which says when to compile now; measured costs are written back to the cache for the next run."""

    setting: str | bool
    signature: str
    steps: int
    can_switch: bool = True  # auto may compile (mid-run): a model with decoder layers, not sharded by its engine
    cache_file: Path = field(default_factory=lambda: user_cache_dir() / COSTS_FILE)
    compiled: bool = False
    reason: str = ""
    _decided: bool = False
    _eager: list[float] = field(default_factory=list)
    _compiled: list[float] = field(default_factory=list)

    def at_setup(self) -> bool:
        """Whether to compile before the first step."""
        if self.setting is True or self.setting is False:
            self._decide(bool(self.setting), f"training.compile: {str(self.setting).lower()}")
        elif not self.can_switch:
            self._decide(False, "auto compiles a model with a list of decoder layers under the ddp engine only")
        else:
            costs = self.cached()
            if costs.eager_step_s is not None:
                self._decide(*should_compile(self.steps, costs.eager_step_s, costs))
            elif self.steps <= EAGER_STEPS + 1:
                self._decide(False, f"{self.steps} steps: too few to pay for compiling")
        return self.compiled

    def step_done(self, step: int, seconds: float) -> bool | None:
        """Record step `step` (1-based) and its time; the decision where this step decided it (True: compile now),
        else None."""
        if self.compiled:
            self._record_compiled(seconds)
            return None
        if step > 1:  # the first step warms up
            self._eager.append(seconds)
        if self._decided:
            if len(self._eager) == EAGER_STEPS:  # an eager run still tells the next one its step time
                self._save(Costs(eager_step_s=min(self._eager)))
            return None
        if len(self._eager) < EAGER_STEPS:
            return None
        # the fastest: a load spike on a shared machine, or a first batch of a new shape, slows a step, and a step
        # time too high would compile where it does not pay (an estimate of 12.3 s/step for steps of 1.9 s did)
        eager = min(self._eager)
        self._decide(*should_compile(self.steps - step, eager, self.cached()))
        if not self.compiled:
            self._save(Costs(eager_step_s=eager))
        return self.compiled

    def _decide(self, compiles: bool, reason: str) -> None:
        self._decided, self.compiled, self.reason = True, compiles, reason

    def _record_compiled(self, seconds: float) -> None:
        """The compile cost: the first compiled steps' time beyond what as many steady ones take."""
        if len(self._compiled) >= COMPILED_STEPS:
            return
        self._compiled.append(seconds)
        if len(self._compiled) < COMPILED_STEPS:
            return
        steady = statistics.median(self._compiled[COMPILED_STEPS // 2 :])
        compile_s = max(0.0, sum(self._compiled) - COMPILED_STEPS * steady)
        eager = min(self._eager) if self._eager else self.cached().eager_step_s
        self._save(Costs(eager_step_s=eager, compiled_step_s=steady, compile_s=compile_s))

    # ------------------------------------------------------------------ the cache
    def cached(self) -> Costs:
        entry = self._read().get(self.signature, {})
        return Costs(**{k: v for k, v in entry.items() if k in Costs.__dataclass_fields__})

    def _save(self, costs: Costs) -> None:
        """Merge `costs` into this signature's entry (a later measurement replaces an earlier one)."""
        table = self._read()
        entry = table.get(self.signature, {})
        entry.update({k: v for k, v in vars(costs).items() if v is not None and math.isfinite(v)})
        entry["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
        table[self.signature] = entry
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.cache_file, json.dumps(table, indent=1, sort_keys=True))
        except (OSError, XtuneError):  # a read-only or full cache dir costs the next run its estimate, not this run
            pass

    def _read(self) -> dict:
        try:
            table = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):  # none yet, or a damaged one: measured again
            return {}
        return table if isinstance(table, dict) else {}
