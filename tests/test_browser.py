"""What spanline stores, as MLflow's own UI shows it, in a real (headless) Chromium (issue #10, section 4).

spanline writes the seed's agent, a call with thinking and a tool call, an API error and a call with an image
to a real ``mlflow server``; each trace is opened at ``/#/experiments/{id}/traces?traceId={id}`` and the test
waits (never sleeps) for what a person would look for: User and Assistant bubbles, the tool call, the
thinking, the picture drawn from its attachment, the failed span in red. Screenshots are kept in
``browser-screenshots/`` (ignored by git) for a person to look at.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import anthropic
import mlflow
import pytest
from helpers import TOOLS, make_agent, traces_in
from test_attachments import image_block, png

import spanline
from spanline.testing import FakeAnthropicAPI

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "browser-screenshots"
WAIT_S = 90  # the UI's first load on a busy 2-core machine takes a while
IMAGE_SIZE = (48, 32)

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


@pytest.fixture
def browser():
    """Headless Chromium through chromedriver, both in a process group of their own that is killed at the
    end whatever happened, with a fresh profile."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="spanline-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1600,1000"):
        options.add_argument(flag)
    service = Service(CHROMEDRIVER, popen_kw={"start_new_session": True})
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(WAIT_S)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        process = getattr(service, "process", None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # chromedriver and every chromium it started
            with contextlib.suppress(Exception):
                process.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


def _write_traces(experiment: str) -> dict[str, str]:
    """Write the four traces with spanline; return their ids by what they show."""
    mlflow.anthropic.autolog(disable=True)
    spanline.autolog()
    try:
        fake = FakeAnthropicAPI()
        agent = make_agent(fake.async_client(), spanline.trace(span_type="TOOL"), spanline.trace(span_type="AGENT"))
        asyncio.run(agent("What's the weather like in Paris today?"))
        client = fake.client()
        # Streamed: the UI must draw the message spanline assembled from the SSE events like a returned one.
        stream = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024},
            tools=TOOLS, messages=[{"role": "user", "content": "Think, then check the weather in Paris."}],
            stream=True,
        )
        for _ in stream:
            pass
        with contextlib.suppress(anthropic.NotFoundError):
            client.messages.create(model="fake-error-404", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=64,
            messages=[{"role": "user", "content": [image_block(png(*IMAGE_SIZE)),
                                                   {"type": "text", "text": "What is in this picture?"}]}],
        )
        assert spanline.flush(60)
    finally:
        spanline.autolog(disable=True)
    agent_trace, thinking_trace, error_trace, image_trace = traces_in(experiment)
    assert agent_trace.info.tags["mlflow.traceName"] == "run_tool_agent"
    (streamed,) = thinking_trace.data.spans
    assert streamed.get_attribute("spanline.stream.completed") is True, "the thinking call is the streamed one"
    return {
        "agent": agent_trace.info.trace_id,
        "thinking": thinking_trace.info.trace_id,
        "error": error_trace.info.trace_id,
        "image": image_trace.info.trace_id,
    }


def test_mlflow_ui_shows_spanline_traces(mlflow_server_uri, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, experiment = mlflow_server_uri
    ids = _write_traces(experiment)
    SCREENSHOTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, WAIT_S)

    def open_trace(name: str) -> None:
        browser.get(f"{url}/#/experiments/{experiment}/traces?traceId={ids[name]}")
        # The trace drawer is open when its span tree names the root span.
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid^='span-title-row-']")))

    def shows_text(text: str):
        return wait.until(
            ec.visibility_of_element_located((By.XPATH, f"//*[normalize-space(text())={_xpath_literal(text)}]")),
            f"the UI never showed {text!r}",
        )

    def screenshot(name: str) -> None:
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    try:
        # The seed's agent: the tree, and the chat view of its first LLM call.
        open_trace("agent")
        for span in ("run_tool_agent", "get_weather"):
            shows_text(span)
        calls = browser.find_elements(By.XPATH, "//*[starts-with(@data-testid, 'span-title-row-')]"
                                                "[.//*[normalize-space(text())='AsyncMessages.create']]")
        assert len(calls) == 2
        calls[0].click()
        shows_text("User")
        shows_text("Assistant")
        shows_text("What's the weather like in Paris today?")
        screenshot("agent")

        # Thinking and a tool call.
        open_trace("thinking")
        shows_text("User")
        shows_text("Assistant")
        shows_text("Reasoning")  # the thinking block, folded
        shows_text("get_weather")  # the tool call, with its arguments
        shows_text("Paris")
        screenshot("thinking_and_tool_call")

        # The API error: the span is drawn red, with its exception event.
        open_trace("error")
        title = wait.until(ec.visibility_of_element_located((
            By.XPATH,
            "//*[starts-with(@data-testid, 'span-title-row-')]//*[normalize-space(text())='Messages.create']",
        )))
        red, green, blue = _rgb(title.value_of_css_property("color"))
        assert red > 150 and red > green + 80 and red > blue + 50, title.value_of_css_property("color")
        shows_text("Exception")
        screenshot("api_error")

        # The picture: an <img> drawn from the attachment, at the PNG's own size.
        open_trace("image")
        shows_text("What is in this picture?")
        image = wait.until(lambda d: next(
            (img for img in d.find_elements(By.CSS_SELECTOR, "img")
             if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
             and (d.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
                  == list(IMAGE_SIZE))),
            None,
        ), "the picture never loaded")
        assert image.get_attribute("src").startswith(("blob:", url)), image.get_attribute("src")
        screenshot("image")
    except Exception:
        screenshot("failure")
        raise


def _rgb(css_color: str) -> tuple[int, int, int]:
    red, green, blue = (int(x) for x in re.findall(r"\d+", css_color)[:3])
    return red, green, blue


def _xpath_literal(text: str) -> str:
    assert not ("'" in text and '"' in text), "XPath 1.0 has no escapes; pick another text"
    return f'"{text}"' if "'" in text else f"'{text}'"
