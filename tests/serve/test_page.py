"""The chat page in a real headless browser: Debian's chromium (`apt-get install chromium`; .ci/run installs it)
driven by playwright with `executable_path` (never `playwright install`, which downloads a browser). The page streams
the answer `xtune chat --greedy` gives, with the tool call shown inline, resets, and for the tiny LLaVA answers about
an uploaded image as `xtune chat --image` does."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from xtune.cli import main
from xtune.multimodal.shapes import QUESTIONS


def chat_output(capsys, *argv: str) -> str:
    capsys.readouterr()
    main(["chat", *argv, "--greedy"])
    return capsys.readouterr().out[:-1]  # without the newline chat ends each answer with


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the page test needs Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


def ask(page, text: str):
    """Send `text`; the assistant's bubble once its answer has finished."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-finish", "stop", timeout=60_000)
    return answer


def test_page_streams_the_answer_shows_the_tool_call_and_resets(browser, tool_server, tool_use_model, capsys, tmp_path):
    _, final, _, held_out = tool_use_model
    question = next(q for q, tool, _ in held_out if tool == "calculate")
    expected = chat_output(capsys, str(final), "--prompt", question)

    page = browser.new_page()
    page.goto(tool_server.url)
    page.fill("#temperature", "0")
    answer = ask(page, question)
    assert answer.get_attribute("data-text") == expected
    assert int(answer.get_attribute("data-chunks")) > 1  # it came in pieces as it was generated
    tool_line = next(line for line in expected.split("\n") if line.startswith("[tool] calculate("))
    expect(answer.locator(".tool")).to_have_text(tool_line)  # the call and its result, shown apart
    page.screenshot(path=str(tmp_path / "chat_page.png"))

    page.click("#reset")
    expect(page.locator(".message")).to_have_count(0)
    again = ask(page, question)  # a fresh conversation: the same greedy answer, not a second turn's
    assert again.get_attribute("data-text") == expected
    expect(page.locator(".message")).to_have_count(2)
    page.close()


def test_page_answers_about_an_uploaded_image_as_chat_image_does(browser, tiny_llava, serve, capsys, tmp_path):
    final = tiny_llava.stage2.final
    item = tiny_llava.heldout[0]
    image = str(tiny_llava.data / item["image"])
    expected = chat_output(capsys, str(final), "--image", image, "--prompt", QUESTIONS["colour"])
    assert expected.strip() == item["colour"]

    with serve(str(final)) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.fill("#temperature", "0")
        page.set_input_files("#image", image)
        expect(page.locator("#image-name")).to_contain_text(item["image"].split("/")[-1])
        answer = ask(page, QUESTIONS["colour"])
        assert answer.get_attribute("data-text") == expected
        expect(page.locator(".message.user img")).to_have_count(1)
        page.screenshot(path=str(tmp_path / "image_page.png"))
        page.close()
