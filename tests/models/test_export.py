"""`xtune convert merge BASE ADAPTER OUT`: OUT is a plain transformers model equal to base + adapter (reference:
PEFT's PeftModel on the unmerged base), carries the adapter's tokenizer and chat template, and is written atomically:
a failed merge leaves no OUT (or the previous one intact) and no temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from xtune.cli import main
from xtune.models import export
from xtune.templates import get_template

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"
CONFIG_YAML = "model:\n  method: lora\n  lora: {r: 4, alpha: 8}\ndata:\n  template: qwen_chat\n"


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory, save_trained_adapter) -> tuple[Path, Path]:
    """A random tiny Llama with its tokenizer, and a LoRA adapter for it with random (non-zero) A and B, saved the
    way the recipe saves one: with a tokenizer that has the training chat template, and xtune_config.yaml."""
    root = tmp_path_factory.mktemp("merge")
    base_dir, adapter_dir = root / "base", root / "adapter"
    config = AutoConfig.from_pretrained(TINY_LLAMA)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base.save_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(TINY_LLAMA)
    tokenizer.save_pretrained(base_dir)
    save_trained_adapter(base, base_dir, adapter_dir, "qwen_chat", CONFIG_YAML)
    return base_dir, adapter_dir


def sample_ids() -> torch.Tensor:
    return torch.randint(4, 900, (2, 17), generator=torch.Generator().manual_seed(0))


def reference_logits(base_dir: Path, adapter_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(base logits, base + adapter logits) from transformers and PEFT."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(input_ids=sample_ids()).logits
        adapted = PeftModel.from_pretrained(base, adapter_dir).eval()(input_ids=sample_ids()).logits
    return plain, adapted


def test_merged_model_equals_base_plus_adapter(base_and_adapter, tmp_path, capsys):
    base_dir, adapter_dir = base_and_adapter
    out = tmp_path / "merged"
    main(["convert", "merge", str(base_dir), str(adapter_dir), str(out)])
    assert f"merged model written to {out}" in capsys.readouterr().out

    assert not list(out.glob("adapter_*"))  # a plain model, no PEFT files
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert merged.dtype == torch.float32  # the checkpoint's dtype is kept
    assert not any("lora" in name for name, _ in merged.named_parameters())
    plain, adapted = reference_logits(base_dir, adapter_dir)
    with torch.no_grad():
        logits = merged(input_ids=sample_ids()).logits
    assert (adapted - plain).abs().max() > 1e-2  # the adapter changes the model, so the comparison means something
    torch.testing.assert_close(logits, adapted, rtol=0, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "你好"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        get_template("qwen_chat").render_text(messages, add_generation_prompt=True)
    )
    assert (out / "xtune_config.yaml").read_text() == CONFIG_YAML
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "LoRA r=4, alpha=8" in card and "`qwen_chat`" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_merge_with_a_bad_adapter_path_writes_nothing(base_and_adapter, tmp_path, capsys):
    base_dir, _ = base_and_adapter
    out = tmp_path / "merged"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "merge", str(base_dir), str(tmp_path / "no-such-adapter"), str(out)])
    assert exit_info.value.code == 2
    assert "no-such-adapter" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_merge_failing_while_writing_leaves_previous_output(base_and_adapter, tmp_path, monkeypatch, capsys):
    """A crash after the weights are written (here: in the model card) must not leave a half-written OUT."""
    base_dir, adapter_dir = base_and_adapter
    out = tmp_path / "merged"

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "model_card", broken_card)

    def merge_fails() -> None:  # an unexpected error: one line with its type, exit status 1
        with pytest.raises(SystemExit) as exit_info:
            main(["convert", "merge", str(base_dir), str(adapter_dir), str(out)])
        assert exit_info.value.code == 1
        assert "xtune: error: RuntimeError: disk full" in capsys.readouterr().err

    merge_fails()
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a temporary directory

    out.mkdir()
    (out / "previous.txt").write_text("an earlier export")
    merge_fails()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
