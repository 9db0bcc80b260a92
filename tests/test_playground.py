"""The playground page in a real headless browser (Debian's chromium via selenium, no driver download).

Loads /playground from a real ``t5ort serve``, streams a translation from the bundled model, hovers
a token and checks that its top-n alternatives and entropy show. The screenshot goes to the test's
temporary directory, and to docs/playground.png with T5ORT_UPDATE_SCREENSHOT=1.
Skips only where chromium is missing and CI is not "true" (in CI a missing browser fails).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from test_serve import Server  # the same real-process server as the HTTP tests

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "playground.png"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing; CI must install chromium and chromium-driver.")
        pytest.skip("chromium / chromedriver not installed (apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,860",
                 "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("playground") / "server.log")
    yield s
    s.stop()


def test_playground_streams_a_translation_and_shows_alternatives(browser, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/playground")
    wait = WebDriverWait(browser, 20)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "vocab 179"))
    box = browser.find_element(By.ID, "input")
    box.clear()
    box.send_keys("translate English to German: sevnty-one thousand nine")  # a typo: the model is unsure
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "tokens").get_attribute("data-done") == "true")
    assert browser.find_element(By.ID, "text").text == "\u2192 vierzigtausendneun"
    tokens = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert [t.text for t in tokens] == ["\u2581", "vierzig", "tausend", "neun", "</s>"]
    assert all(t.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)" for t in tokens)
    assert "done: 5 tokens" in browser.find_element(By.ID, "status").text

    ActionChains(browser).move_to_element(tokens[1]).perform()
    tip = wait.until(ec.visibility_of_element_located((By.ID, "tooltip")))
    rows = tip.find_elements(By.CSS_SELECTOR, "#alternatives tr")
    assert len(rows) == 5 and '"vierzig"' in rows[0].text  # the chosen token first, then 4 alternatives
    probs = [float(r.find_element(By.CSS_SELECTOR, "td.p").text) for r in rows]
    assert probs == sorted(probs, reverse=True) and 0.5 < probs[0] < 0.95 and probs[1] > 0.01
    entropy = tip.find_element(By.ID, "entropy").text
    assert entropy.endswith(" nats") and 0.1 < float(entropy.split()[0]) < math.log(179)
    heat = browser.find_elements(By.CSS_SELECTOR, "#heatmap tr")
    assert len(heat) == 1 + 5 and len(heat[1].find_elements(By.TAG_NAME, "td")) == 1 + 5  # ranks x steps
    shot = tmp_path / "playground.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("T5ORT_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(shot.read_bytes())
