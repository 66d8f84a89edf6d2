"""The demo page in a real headless browser: Debian's chromium driven through its chromedriver by
selenium (no browser is downloaded). .ci/run installs both; elsewhere `apt-get install chromium
chromium-driver`, or the test is skipped and says why. Run: `python -m pytest tests/test_serve_browser.py -q`."""

import dataclasses
import io
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import serve
import unet

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them; by hand: "
                "apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -r requirements.txt)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112  # the EXIF tag
WAIT = 60             # seconds for any one thing the page does


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(unet.model_checkpoint(unet.UNet(dataclasses.replace(unet.PRESETS["tiny"], image_size=64))), checkpoint)
    server = serve.start(checkpoint, serve.Limits(), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.segmenter.stop()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1100,900", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # a given driver: no Selenium Manager
    driver.set_page_load_timeout(WAIT)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_state(driver, *states: str) -> str:
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.body.dataset.state") in states)
    return driver.execute_script("return document.body.dataset.state")


def downloaded(driver, suffix: str) -> Path:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = [p for p in driver.downloads.iterdir() if p.name.endswith(suffix)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no *{suffix} downloaded within {WAIT} s")


def screenshot(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def rotated_photo(tmp_path_factory) -> Path:
    """A sample stored on its side with EXIF orientation 6: upright it is the sample again (375x550)."""
    path = tmp_path_factory.mktemp("photos") / "sideways.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown rotated 90 degrees clockwise
    with Image.open(PROJECT / "app" / "samples" / "dress.jpg") as sample:
        sample.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    return path


def test_upload_overlay_toggle_and_downloads(browser, url, rotated_photo):
    browser.get(url)
    assert wait_state(browser, "ready", "error") == "ready"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#samples img")) == 3
    browser.find_element(By.ID, "file").send_keys(str(rotated_photo))  # the page's own file input
    assert wait_state(browser, "done", "error") == "done", browser.find_element(By.ID, "message").text
    # the browser turned the photo upright as the server did: the labels line up with it
    assert browser.execute_script("const p = document.getElementById('photo'), o = document.getElementById('overlay');"
                                  "return [p.naturalWidth, p.naturalHeight, o.width, o.height]") == [375, 550, 375, 550]
    assert not browser.find_element(By.ID, "message").is_displayed()

    stage = browser.find_element(By.ID, "stage")
    before = screenshot(stage)
    assert before.shape[0] > 200 and before.std() > 20  # not blank
    assert len(np.unique(before.reshape(-1, 3) // 16, axis=0)) > 30  # photo and label colours, not one fill
    slider = "const s = document.getElementById('opacity'); s.value = arguments[0];" \
             "s.dispatchEvent(new Event('input'))"
    browser.execute_script(slider, 0)
    photo_only = screenshot(stage)
    browser.execute_script(slider, 60)
    assert np.abs(before - photo_only).mean() > 10  # the label colours are on the screen

    rows = browser.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
    assert len(rows) > 1
    first = rows[0].find_element(By.CSS_SELECTOR, "input[data-label]")
    name = first.get_attribute("data-label")
    transparent = "return document.getElementById('overlay').getContext('2d').getImageData(0, 0, 375, 550)" \
                  ".data.filter((v, i) => i % 4 === 3 && v === 0).length"
    assert browser.execute_script(transparent) == 0
    first.click()  # hide the largest label
    pixels = browser.execute_script(transparent)
    assert pixels > 0
    after = screenshot(stage)
    assert np.abs(after - before).mean() > 1, f"hiding {name} changed nothing on the screen"

    # the cut-out of the largest label: its pixels opaque, every other one transparent
    rows[0].find_elements(By.CSS_SELECTOR, "input")[1].click()
    browser.find_element(By.ID, "cutout").click()
    with Image.open(downloaded(browser, "_cutout.png")) as cutout:
        assert cutout.mode == "RGBA" and cutout.size == (375, 550)
        alpha = np.asarray(cutout)[..., 3]
    browser.find_element(By.ID, "labelpng").click()
    with Image.open(downloaded(browser, "_labels.png")) as labels:
        ids = np.asarray(labels)
        assert labels.mode == "P" and labels.size == (375, 550)
    browser.find_element(By.ID, "json").click()
    summary = json.loads(downloaded(browser, "sideways.json").read_text())
    assert set(np.unique(alpha)) <= {0, 255}
    np.testing.assert_array_equal(alpha == 255, ids == summary["labels"][name]["id"])
    assert summary["labels"][name]["pixels"] == pixels

    # the boundary map, and post-processing off
    browser.find_element(By.CSS_SELECTOR, "input[name=view][value=boundary]").click()
    assert browser.find_element(By.ID, "boundary").is_displayed()
    assert not browser.find_element(By.ID, "overlay").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#postprocess option[value=none]").click()
    assert wait_state(browser, "done", "error") == "done"
    assert browser.execute_script("return answer.postprocess") == "none"


def test_messages_for_bad_files_and_a_phone_screen(browser, url, tmp_path):
    browser.get(url)
    assert wait_state(browser, "ready", "error") == "ready"
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    browser.find_element(By.ID, "file").send_keys(str(text))
    assert wait_state(browser, "error") == "error"  # refused by the page itself: nothing was sent
    message = browser.find_element(By.ID, "message")
    assert message.is_displayed() and "notes.txt is not an image" in message.text
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((PROJECT / "app" / "samples" / "skirt.jpg").read_bytes()[:5000])
    browser.find_element(By.ID, "file").send_keys(str(broken))  # refused by the server
    WebDriverWait(browser, WAIT).until(lambda d: "truncated" in message.text)
    assert wait_state(browser, "error") == "error"
    assert "This photo cannot be used" in message.text and "truncated" in message.text

    browser.set_window_size(390, 844)  # a phone's screen: everything fits its width
    browser.find_element(By.CSS_SELECTOR, "#samples button").click()
    assert wait_state(browser, "done", "error") == "done"
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    stage = browser.find_element(By.ID, "stage").rect
    assert stage["width"] <= 390 and stage["height"] > 100
    browser.set_window_size(1100, 900)
