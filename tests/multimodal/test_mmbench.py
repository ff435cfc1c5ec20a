"""MMBench-layout scoring: reading the TSV (base64 images, optional C/D, errors with the line), the prompt,
parsing a reply into an option, and accuracy overall and per category."""

from __future__ import annotations

import base64
import csv
import io
import random
from pathlib import Path

import pytest
from PIL import Image

from xtune.errors import DataError
from xtune.multimodal.mmbench import INSTRUCTION, evaluate, parse_choice, prompt, read_tsv
from xtune.multimodal.shapes import mmbench_rows, write_images


def write_tsv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def tsv(tmp_path) -> Path:
    shapes = write_images(tmp_path, 6, seed=0, prefix="q")
    return write_tsv(tmp_path / "bench.tsv", mmbench_rows(shapes, random.Random(0), tmp_path))


def test_reads_questions_with_images(tsv):
    questions = read_tsv(tsv)
    assert len(questions) == 12  # a colour and a shape question per image
    first = questions[0]
    assert first.category == "colour" and set(first.options) == set("ABCD")
    assert first.image.size == (32, 32) and first.answer in first.options
    text = prompt(first)
    assert text.startswith("What colour is the shape?\nA. ") and text.endswith(INSTRUCTION)


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C) green", "C"),
        (" A", "A"),
        ("Answer: C", "C"),
        ("The answer is (B).", "B"),
        ("**D**", "D"),
        ("[A]", "A"),
        ("I choose option B because the shape is green", "B"),
        ("blue", "D"),
        ("It is red", "A"),
        ("D", "D"),
        ("The answer is yellow", "C"),  # no option letter: the option's text
        ("A blue one, I think", "D"),  # a lone "A" in a longer reply is the article: the text decides
    ],
)
def test_parse_choice(reply, choice):
    assert parse_choice(reply, {"A": "red", "B": "green ", "C": "yellow", "D": "blue"}) == choice


def test_parse_choice_undecidable():
    options = {"A": "red", "B": "blue"}
    assert parse_choice("red or blue", options) is None
    assert parse_choice("purple", options) is None
    assert parse_choice("C", options) is None  # not an option of this question
    assert parse_choice("A or B", options) is None  # two letters, no option text


class Oracle:
    """Answers colour questions right (with the option's text) and shape questions with the letter A."""

    def __init__(self, questions):
        self.questions = iter(questions)

    def set_images(self, images):
        self.current = next(self.questions)

    def ask(self, text):
        q = self.current
        return q.options[q.answer] if q.category == "colour" else "A"


def test_accuracy_overall_and_per_category(tsv):
    questions = read_tsv(tsv)
    scores = evaluate(Oracle(questions), questions)
    shape = [q for q in questions if q.category == "shape"]
    assert scores.accuracy["colour"] == 1.0
    assert scores.accuracy["shape"] == sum(q.answer == "A" for q in shape) / len(shape)
    assert scores.accuracy["all"] == pytest.approx((6 + scores.accuracy["shape"] * 6) / 12)
    assert (scores.questions, scores.unparsed) == (12, 0)


class Mumbler:
    """Replies to every question with text that names no option, except every third, answered with its letter."""

    def __init__(self, questions):
        self.questions, self.count = iter(questions), 0

    def set_images(self, images):
        self.current = next(self.questions)

    def ask(self, text):
        self.count += 1
        return f"Answer: {self.current.answer}" if self.count % 3 == 0 else "I cannot tell from this picture."


def test_unparsed_replies_are_counted_and_reported(tsv, monkeypatch, capsys):
    from xtune.cli import main
    from xtune.multimodal import mmbench

    questions = read_tsv(tsv)
    scores = evaluate(Mumbler(questions), questions)
    assert (scores.questions, scores.unparsed) == (12, 8)
    assert scores.accuracy["all"] == pytest.approx(4 / 12)  # the unparsed replies count as wrong

    monkeypatch.setattr(mmbench, "run", lambda model, tsv, max_new_tokens, out: scores)
    main(["eval-mmbench", "model_dir", str(tsv)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "accuracy: 33.33%"
    assert out[-1] == (
        "unparsed: 8 of 12 replies (66.7%) name no option and count as wrong; --out FILE keeps the replies"
    )


def test_errors_name_the_line(tmp_path):
    image = io.BytesIO()
    Image.new("RGB", (4, 4)).save(image, format="PNG")
    good = {"index": 0, "question": "Q", "A": "x", "B": "y", "answer": "A", "image": base64.b64encode(image.getvalue())}
    good["image"] = good["image"].decode()
    with pytest.raises(DataError, match=r"bench.tsv:3: column 'image' is not a base64-encoded image"):
        read_tsv(write_tsv(tmp_path / "bench.tsv", [good, {**good, "image": "%%%"}]))
    with pytest.raises(DataError, match=r"bench.tsv:2: answer 'C' is not one of the options A, B"):
        read_tsv(write_tsv(tmp_path / "bench.tsv", [{**good, "answer": "C"}]))
    with pytest.raises(DataError, match=r"missing column\(s\) image"):
        read_tsv(write_tsv(tmp_path / "bench.tsv", [{k: v for k, v in good.items() if k != "image"}]))
