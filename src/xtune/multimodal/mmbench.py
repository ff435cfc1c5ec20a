"""Scoring a multiple-choice image benchmark in MMBench's TSV layout: index, question, hint?, A..D, answer
(a letter), image (base64), category?. Prompted as XTuner's MMBench evaluation does; single pass (no circular
re-ordering of the options)."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from xtune.chat.generate import GenerationSettings
from xtune.config.schema import CONFIG_FILE
from xtune.errors import DataError
from xtune.multimodal.chat import image_session, load_llava_for_inference
from xtune.templates import resolve_template

LETTERS = "ABCD"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class Question:
    index: str
    question: str
    hint: str
    options: dict[str, str]  # letter -> text, only the options present
    answer: str | None  # None in test splits without answers
    image: Image.Image
    category: str


def read_tsv(path: Path) -> list[Question]:
    csv.field_size_limit(sys.maxsize)  # base64 images are longer than csv's default field limit
    try:
        f = path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    with f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"question", "A", "B", "image"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; MMBench TSVs have "
                "index, question, hint, A, B, C, D, answer, image (base64), category"
            )
        return [_question(path, line, row) for line, row in enumerate(reader, start=2)]


def _question(path: Path, line: int, row: dict) -> Question:
    try:
        image = Image.open(io.BytesIO(base64.b64decode(row["image"], validate=True))).convert("RGB")
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}:{line}: column 'image' is not a base64-encoded image ({e})") from None
    options = {letter: row[letter] for letter in LETTERS if (row.get(letter) or "").strip() not in ("", "nan")}
    answer = (row.get("answer") or "").strip() or None
    if answer is not None and answer not in options:
        raise DataError(f"{path}:{line}: answer {answer!r} is not one of the options {', '.join(options)}")
    hint = (row.get("hint") or "").strip()
    return Question(
        row.get("index", str(line)),
        row["question"],
        "" if hint == "nan" else hint,
        options,
        answer,
        image,
        row.get("category") or "",
    )


def prompt(question: Question) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in question.options.items())
    context = f"{question.hint}\n" if question.hint else ""
    return f"{context}{question.question}\n{options}\n{INSTRUCTION}"


# MMBench's evaluation (VLMEvalKit's can_infer_option) reads a letter as a word of its own once these marks are
# spaces, so "A", "A.", "(A)", "Answer: A", "**A**" and "The answer is A" all name option A.
_LETTER_MARKS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def parse_choice(reply: str, options: dict[str, str]) -> str | None:
    """The option a reply picks, as MMBench's own evaluation (VLMEvalKit) extracts it without an LLM judge: the one
    option letter standing as a word in the reply; failing that, the one option whose text the reply contains.
    None when neither finds exactly one option."""
    words = reply.translate(_LETTER_MARKS).split()
    letters = [letter for letter in options if letter in words]
    # VLMEvalKit's guard: in a reply of more than three words an "A" may be the article ("A red circle, I think"),
    # so the letter is not trusted and the option texts decide
    if len(letters) == 1 and not ("A" in words and len(words) > 3):
        return letters[0]
    named = [letter for letter, text in options.items() if text.strip().lower() in reply.lower()]
    return named[0] if len(named) == 1 else None


@dataclass
class Scores:
    """Accuracy over the questions with answers ("all" and per category), and how many replies (of all questions)
    named no option: those count as wrong, so a high count means the score says more about the reply format than
    about the model."""

    accuracy: dict[str, float]
    questions: int
    unparsed: int


def evaluate(session, questions: list[Question], on_result=None) -> Scores:
    """Ask every question; `session` is an ImageChatSession."""
    right, total = Counter(), Counter()
    unparsed = 0
    for question in questions:
        session.set_images([question.image])
        reply = session.ask(prompt(question))
        choice = parse_choice(reply, question.options)
        unparsed += choice is None
        if on_result is not None:
            on_result(question, reply, choice)
        if question.answer is None:
            continue
        for key in ("all", question.category or "all"):
            total[key] += 1
            right[key] += choice == question.answer
            if key == "all" and not question.category:
                break
    return Scores({key: right[key] / total[key] for key in total}, len(questions), unparsed)


def run(model_path: str, tsv: str, max_new_tokens: int = 16, out: str | None = None) -> Scores:
    """`xtune eval-mmbench`: load the model, answer every question greedily and score the answers; with `out`, one
    JSON line per question (reply and choice)."""
    import json

    import yaml

    questions = read_tsv(Path(tsv))
    model, tokenizer, source = load_llava_for_inference(model_path)
    trained = yaml.safe_load((source / CONFIG_FILE).read_text()) if (source / CONFIG_FILE).exists() else {}
    template_name = (trained.get("data") or {}).get("template")
    template = resolve_template(template_name, tokenizer) if template_name else None
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    session = image_session(model, tokenizer, template, settings, source, [], (trained.get("data") or {}).get("system"))
    lines = []

    def record(question: Question, reply: str, choice: str | None) -> None:
        lines.append({"index": question.index, "reply": reply, "choice": choice, "answer": question.answer})

    scores = evaluate(session, questions, record)
    if out:
        Path(out).write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), "utf-8")
    return scores
