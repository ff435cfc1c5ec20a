"""Token-by-token generation with a KV cache, streaming, and stopping at the template's stop words."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from xtune.models.load import causal_lm


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    stop_words: list[str] = field(default_factory=list)


@dataclass
class Generation:
    text: str  # the reply, without the stop word
    finish_reason: str  # "stop" (end of turn or a stop word), "length" (max_new_tokens) or "cancelled"
    prompt_tokens: int
    completion_tokens: int  # every token sampled, the end-of-turn token included (as OpenAI's usage counts them)


def _next_token(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> int:
    if settings.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < settings.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


# Generation feeds the layers a new shape every token: compiled layers (training.compile) would recompile each time.
@torch.compiler.set_stance("force_eager")
@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: list[int],
    settings: GenerationSettings,
    on_text: Callable[[str], None] | None = None,
    generator: torch.Generator | None = None,
    model_inputs: dict[str, torch.Tensor] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generation:
    """Generate a reply to `input_ids`. `on_text` receives text as it becomes final (held back while it could
    still be the start of a stop word). `model_inputs` go with the prompt's forward only (a LLaVA's pixel_values:
    their features then live in the KV cache). `should_stop` is asked before each token (a server's client that
    went away): True ends the reply there."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    # transformers 5 renamed past_key_values to cache; accept either so any 5.x release works.
    cache_arg = "cache" if "cache" in inspect.signature(causal_lm(model).forward).parameters else "past_key_values"
    cache, new_ids, emitted = None, [], 0
    text = ""
    first = {k: v.to(device) for k, v in (model_inputs or {}).items()}
    hold = max((len(w) for w in settings.stop_words), default=1) - 1
    finish, sampled = "length", 0
    try:
        for _ in range(settings.max_new_tokens):
            if should_stop is not None and should_stop():
                finish = "cancelled"
                break
            out = model(input_ids=ids, use_cache=True, **{cache_arg: cache}, **first)
            first = {}
            cache = getattr(out, cache_arg)
            token = _next_token(out.logits[0, -1], settings, generator)
            sampled += 1
            if token == tokenizer.eos_token_id:
                finish = "stop"
                break
            new_ids.append(token)
            text = tokenizer.decode(new_ids, skip_special_tokens=False)
            stop_at = min((i for w in settings.stop_words if (i := text.find(w)) >= 0), default=None)
            if stop_at is not None:
                text = text[:stop_at]
                finish = "stop"
                break
            if on_text and not text.endswith("\ufffd"):  # wait for multi-byte characters to complete
                final = len(text) - hold
                if final > emitted:
                    on_text(text[emitted:final])
                    emitted = final
            ids = torch.tensor([[token]], device=device)
    finally:
        model.train(was_training)
    text = text.rstrip("\ufffd")
    if on_text and len(text) > emitted:
        on_text(text[emitted:])
    return Generation(text, finish, len(input_ids), sampled)
