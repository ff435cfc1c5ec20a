"""Samples -> token ids and labels. This is where labels are masked.

The whole rendered text is tokenized at once (so ids equal what the tokenizer gives for the full chat, as
`apply_chat_template` would) and each token is labelled from the segment its first character falls in:
trained segments keep their ids as labels, everything else is IGNORE_INDEX.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from xtune.data.formats import Sample, preference_pair
from xtune.templates import Segment, Template

IGNORE_INDEX = -100


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    images: list[str] = field(default_factory=list)  # image files, in the order of their tokens (multimodal)
    # The lengths of the sequences this sample joins end to end, each with its own positions from 0: a preference
    # pair's chosen and rejected conversations. Empty: one sequence. Packing never splits them.
    parts: list[int] = field(default_factory=list)
    label: bool | None = None  # KTO: whether the reply is desirable (its parts: the sample, then its KL sequence)

    def part_slices(self) -> list[slice]:
        """Where each sequence lies in input_ids (one slice for a plain sample)."""
        bounds = [0]
        for n in self.parts or [len(self.input_ids)]:
            bounds.append(bounds[-1] + n)
        return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def sample_segments(
    sample: Sample, template: Template | None, tokenizer: PreTrainedTokenizerBase, system: str | None = None
) -> list[Segment]:
    """Render a mapped sample into text segments with trained flags."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    if "text" in sample:  # pre-training text: every token trained, documents separated by EOS
        return [Segment((bos if adds_bos(tokenizer) else "") + sample["text"] + eos, True)]
    if template is None:
        raise ValueError("a conversation sample needs a chat template")
    return template.render(sample["messages"], bos=bos, eos=eos, tools=sample.get("tools"), system=system)


def sample_segment_lists(
    sample: Sample, template: Template | None, tokenizer: PreTrainedTokenizerBase, system: str | None = None
) -> list[list[Segment]]:
    """The segments of each sequence of a sample: one, or a preference pair's chosen and rejected, rendered by the
    same template as SFT so that their prompts are the same text (only the final reply of each is trained)."""
    if "chosen" not in sample and "rejected" not in sample:
        return [sample_segments(sample, template, tokenizer, system)]
    extra = {"tools": sample["tools"]} if "tools" in sample else {}
    return [sample_segments({"messages": c, **extra}, template, tokenizer, system) for c in preference_pair(sample)]


def with_kl_replies(samples: Sequence[Sample]) -> list[Sample]:
    """KTO's samples (conversations with a `label`) as pairs of sequences: the conversation itself, then its KL
    sequence, the same prompt answered by the previous sample's final reply (the last one's, for the first), as TRL
    rotates completions by one. Both are rendered by the same template and only their final replies are scored."""
    replies = [s["messages"][-1] for s in samples]
    return [
        {**s, "chosen": s["messages"], "rejected": [*s["messages"][:-1], replies[i - 1]]} for i, s in enumerate(samples)
    ]


def joined(sequences: Sequence[EncodedSample], label: bool | None = None) -> EncodedSample:
    """Several encoded sequences as one sample (a preference pair; KTO's sample and its KL sequence, with its
    `label`), positions restarting at each (see parts)."""
    if len(sequences) == 1:
        return sequences[0]
    return EncodedSample(
        [i for s in sequences for i in s.input_ids],
        [label for s in sequences for label in s.labels],
        any(s.truncated for s in sequences),
        parts=[len(s.input_ids) for s in sequences],
        label=label,
    )


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether this tokenizer prepends BOS by itself (Llama, InternLM2 do; Qwen does not)."""
    bos_id = tokenizer.bos_token_id
    return bos_id is not None and tokenizer("a").input_ids[:1] == [bos_id]


def encode_batch(
    segment_lists: Sequence[list[Segment]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[EncodedSample]:
    texts = ["".join(s.text for s in segments) for segments in segment_lists]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for segments, ids, offsets in zip(segment_lists, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        out.append(_label(segments, ids, offsets, max_length))
    return out


def _label(segments: list[Segment], ids: list[int], offsets: list[tuple[int, int]], max_length: int) -> EncodedSample:
    starts, trained, pos = [], [], 0
    for segment in segments:
        starts.append(pos)
        trained.append(segment.trained)
        pos += len(segment.text)
    labels = []
    for token_id, (char_start, _) in zip(ids, offsets, strict=True):
        segment_index = bisect.bisect_right(starts, char_start) - 1
        labels.append(token_id if trained[segment_index] else IGNORE_INDEX)
    if labels:
        labels[0] = IGNORE_INDEX  # the first token has no context to be predicted from
    truncated = len(ids) > max_length
    return EncodedSample(list(ids[:max_length]), labels[:max_length], truncated)


def has_trained_tokens(sample: EncodedSample) -> bool:
    """Whether every sequence of the sample (both of a pair) has a trained token."""
    return all(any(label != IGNORE_INDEX for label in sample.labels[part]) for part in sample.part_slices())
