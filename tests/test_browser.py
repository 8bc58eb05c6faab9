"""What spanline stores, as MLflow's own UI shows it, in a real (headless) Chromium (issues #10 and #19).

spanline writes one trace of every surface the README lists (``browser_surfaces.py``) to a real ``mlflow
server``. The trace list is opened first: a reply cut short shows its tag there, a whole one none. Then each
trace is opened at ``/#/experiments/{id}/traces?traceId={id}`` and the test waits (never sleeps) for what a
person would look for: User and Assistant bubbles where MLflow draws them for its own chat spans, the token
count in the header, the tool call, the thinking, the picture drawn from its attachment, the failed span in
red, a run's reply with no raw ``null`` field. One screenshot per surface goes to ``browser-screenshots/``
(ignored by git; CI keeps the folder): the docs' screenshots (docs/ui.md) are copies of them.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import mlflow
import pytest
from browser_surfaces import CHECKS, CUT_SHORT, IMAGE_SIZE, LIST_PREVIEW, screenshot_name, write_surfaces
from helpers import traces_in

import spanline

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "browser-screenshots"
WAIT_S = 90  # the UI's first load on a busy 2-core machine takes a while

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
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1900,1000"):
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



def _stored(experiment: str) -> dict[str, object]:
    return {t.info.trace_id: t for t in traces_in(experiment)}


def test_mlflow_ui_shows_every_surface(mlflow_server_uri, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, experiment = mlflow_server_uri
    mlflow.anthropic.autolog(disable=True)
    spanline.autolog()
    try:
        ids = write_surfaces(experiment)
    finally:
        spanline.autolog(disable=True)
    assert set(CHECKS) <= set(ids), set(CHECKS) - set(ids)
    stored = _stored(experiment)
    SCREENSHOTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, WAIT_S)

    def visible(xpath: str, what: str):
        return wait.until(ec.visibility_of_element_located((By.XPATH, xpath)), f"the UI never showed {what}")

    def shows_text(text: str, within: str = "//*"):
        return visible(f"{within}[normalize-space(text())={_xpath_literal(text)}]", repr(text))

    def screenshot(name: str) -> None:
        browser.save_screenshot(str(SCREENSHOTS / screenshot_name(name)))

    def open_trace(name: str) -> None:
        browser.get(f"{url}/#/experiments/{experiment}/traces?traceId={ids[name]}")
        # The trace drawer is open when its span tree names the root span.
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid^='span-title-row-']")))

    def select_span(span_name: str) -> None:
        rows = f"//*[starts-with(@data-testid, 'span-title-row-')][.//*[normalize-space(text())='{span_name}']]"
        visible(rows, f"the span {span_name}")
        browser.find_elements(By.XPATH, rows)[0].click()

    try:
        # The list: a reply cut short is tagged in the row a person scans; whole replies carry no such tag.
        browser.get(f"{url}/#/experiments/{experiment}/traces")
        visible("//*[normalize-space(text())='Tags']", "the list's Tags column")
        # MLflow's assistant panel and its "Detect issues" guide cover the list's right columns: closed.
        for control in ("mlflow.detect_issues.guidance.got_it", "mlflow.assistant.chat_panel.close"):
            for button in browser.find_elements(By.CSS_SELECTOR, f"button[data-component-id='{control}']"):
                with contextlib.suppress(Exception):
                    button.click()
        # Each tag pill in the list is a button that filters the list by that tag.
        chip = "//*[@role='button'][starts-with(@aria-label, 'Filter by tag spanline.cut_short:')]"
        for name, how in CUT_SHORT.items():
            tag = visible(f"{chip}[@aria-label='Filter by tag spanline.cut_short: {how}']", f"the tag of {name}")
            # Its row: the innermost element around the tag that holds the trace's request preview, and no
            # other trace's (the trace list's first row, the seed agent, is never cut short).
            row = tag.find_element(By.XPATH, f"ancestor::*[contains(., {_xpath_literal(LIST_PREVIEW[name])})][1]")
            assert "weather like in Paris" not in row.text, "the tag is not inside its trace's row"
        tags = [t for t in browser.find_elements(By.XPATH, chip) if t.is_displayed()]
        assert len(tags) == len(CUT_SHORT), [t.text for t in tags]
        screenshot("trace_list")

        for name, (span_name, texts, chat) in CHECKS.items():
            open_trace(name)
            if span_name is not None:
                select_span(span_name)
            for text in texts:
                shows_text(text)
            if chat:
                shows_text("User")
                shows_text("Assistant")
            trace = stored[ids[name]]
            usage = trace.info.token_usage
            if usage:  # the header counts the trace's tokens, as MLflow's own chat traces do
                shows_text(f"{usage['total_tokens']} tokens")
            if name.startswith("tool runner"):
                # The run's reply is drawn as the Assistant's, and none of its fields is a raw null.
                outputs = visible("//*[normalize-space(text())='Outputs']/ancestor::*[.//*[text()='Assistant']][1]",
                                  "the run's outputs")
                assert "null" not in outputs.text, outputs.text
            if name in ("stream failed", "api error"):
                # The failed span is drawn red, with its exception event.
                root = trace.data.spans[0].name
                title = visible("//*[starts-with(@data-testid, 'span-title-row-')]"
                                f"//*[normalize-space(text())='{root}']", "the failed span")
                red, green, blue = _rgb(title.value_of_css_property("color"))
                assert red > 150 and red > green + 80 and red > blue + 50, title.value_of_css_property("color")
            if name == "image":
                # The picture: an <img> drawn from the attachment, at the PNG's own size.
                image = wait.until(lambda d: next(
                    (img for img in d.find_elements(By.CSS_SELECTOR, "img")
                     if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                     and (d.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
                          == list(IMAGE_SIZE))),
                    None,
                ), "the picture never loaded")
                assert image.get_attribute("src").startswith(("blob:", url)), image.get_attribute("src")
            screenshot(name)
    except Exception:
        screenshot("failure")
        (SCREENSHOTS / "failure.html").write_text(browser.page_source)
        raise


def _rgb(css_color: str) -> tuple[int, int, int]:
    red, green, blue = (int(x) for x in re.findall(r"\d+", css_color)[:3])
    return red, green, blue


def _xpath_literal(text: str) -> str:
    assert not ("'" in text and '"' in text), "XPath 1.0 has no escapes; pick another text"
    return f'"{text}"' if "'" in text else f"'{text}'"
