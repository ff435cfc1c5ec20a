"""A synthetic image set for the offline LLaVA demo and tests: coloured shapes on plain backgrounds, drawn with PIL.

`python -m xtune.multimodal.shapes DIR` writes DIR/images/*.png, captions.jsonl (stage 1), questions.jsonl
(stage 2), and held-out heldout.jsonl and mmbench.tsv (MMBench's layout) from other images.
"""

from __future__ import annotations

import base64
import csv
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 230), "yellow": (235, 205, 20)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape is it?"}
CAPTION_PROMPT = "Describe the image briefly."


@dataclass(frozen=True)
class Shape:
    file: str  # relative to the dataset directory
    colour: str
    shape: str


def draw(colour: str, shape: str, rng: random.Random, size: int = 32) -> Image.Image:
    """One large shape, roughly centred, of random size and offset on a plain light or dark grey background."""
    background = rng.choice([rng.randint(0, 70), rng.randint(170, 255)])
    image = Image.new("RGB", (size, size), (background,) * 3)
    extent = rng.randint(size * 20 // 32, size * 26 // 32)
    x, y = (rng.randint(1, size - extent - 1) for _ in range(2))
    pen, fill = ImageDraw.Draw(image), COLOURS[colour]
    if shape == "circle":
        pen.ellipse([x, y, x + extent, y + extent], fill=fill)
    elif shape == "square":
        pen.rectangle([x, y, x + extent, y + extent], fill=fill)
    else:
        pen.polygon([(x + extent / 2, y), (x, y + extent), (x + extent, y + extent)], fill=fill)
    return image


def write_images(out: Path, count: int, seed: int, prefix: str) -> list[Shape]:
    """`count` images cycling through every colour x shape, written as PNG under out/images."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    shapes = []
    for i in range(count):
        colour, shape = kinds[i % len(kinds)]
        file = f"images/{prefix}{i:04d}.png"
        draw(colour, shape, rng).save(out / file)
        shapes.append(Shape(file, colour, shape))
    return shapes


def llava_record(id_: str, image: str, prompt: str, answer: str) -> dict:
    turns = [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": answer}]
    return {"id": id_, "image": image, "conversations": turns}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def mmbench_rows(shapes: list[Shape], rng: random.Random, out: Path) -> list[dict]:
    """Two questions per image (colour among 4, shape among 3 plus a distractor colour), MMBench columns."""
    rows = []
    for shape in shapes:
        encoded = base64.b64encode((out / shape.file).read_bytes()).decode()
        for kind, answer in (("colour", shape.colour), ("shape", shape.shape)):
            options = list(COLOURS) if kind == "colour" else [*SHAPES, rng.choice(list(COLOURS))]
            rng.shuffle(options)
            row = {"index": len(rows), "question": QUESTIONS[kind], "hint": "", "image": encoded}
            row.update({letter: option for letter, option in zip("ABCD", options, strict=True)})
            row.update({"answer": "ABCD"[options.index(answer)], "category": kind})
            rows.append(row)
    return rows


def write_dataset(out: Path, train: int = 240, heldout: int = 48, seed: int = 0) -> dict[str, list[Shape]]:
    out = Path(out)
    train_shapes = write_images(out, train, seed, "train")
    heldout_shapes = write_images(out, heldout, seed + 1, "heldout")
    captions = [
        llava_record(f"cap{i}", s.file, CAPTION_PROMPT, f"A {s.colour} {s.shape}.") for i, s in enumerate(train_shapes)
    ]
    questions = [
        llava_record(f"{kind}{i}", s.file, QUESTIONS[kind], getattr(s, kind))
        for i, s in enumerate(train_shapes)
        for kind in QUESTIONS
    ]
    write_jsonl(out / "captions.jsonl", captions)
    write_jsonl(out / "questions.jsonl", questions)
    write_jsonl(
        out / "heldout.jsonl", [{"image": s.file, "colour": s.colour, "shape": s.shape} for s in heldout_shapes]
    )
    rows = mmbench_rows(heldout_shapes, random.Random(seed), out)
    with (out / "mmbench.tsv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return {"train": train_shapes, "heldout": heldout_shapes}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m xtune.multimodal.shapes OUT_DIR")
    write_dataset(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}: captions.jsonl, questions.jsonl, heldout.jsonl, mmbench.tsv, images/")
