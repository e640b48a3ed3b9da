"""`wanport serve --ui` driven in a real headless Chromium (selenium + chromedriver): a prompt is
typed and submitted, the page shows the task's progress and then a playable <video> served by the
page, and the task went through the server's own queue (it is in the task store, done).

Skipped where Chromium, chromedriver, selenium or gradio are not installed (the CI image has
none of them; `pip install 'wanport[serve]' selenium` plus a Chromium and its driver run it).
``WANPORT_UI_SCREENSHOT=path.png`` saves a screenshot of the finished page (docs/serving-ui.png
was made this way).
"""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

pytest.importorskip("gradio")
pytest.importorskip("selenium")
pytest.importorskip("httpx")

from _serve_helpers import SMALL, Server  # noqa: E402

CHROMIUM = next((p for p in (os.environ.get("WANPORT_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)
DRIVER = os.environ.get("WANPORT_CHROMEDRIVER") or shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Chromium and chromedriver")


def test_gradio_page_submits_a_prompt_and_shows_the_video(tiny_ckpt, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = str(tmp_path / "srv")
    srv = Server(["checkpoint_dir=%s" % tiny_ckpt] + SMALL + ["sample.frame_num=5", "--out-dir", out, "--ui"],
                 str(tmp_path / "ui.log"))
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(srv.url + "/ui/")
        box = WebDriverWait(driver, 90).until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        box.clear()
        box.send_keys("a lighthouse in a storm")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        video = WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video video"))[0]
        assert video.get_attribute("src").endswith(".mp4")
        # the browser can play it: metadata loaded with the video's size
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].readyState >= 1", video))
        assert driver.execute_script("return [arguments[0].videoWidth, arguments[0].videoHeight]", video) == [32, 32]
        status = driver.find_element(By.CSS_SELECTOR, "#status").text
        assert "done" in status
        if os.environ.get("WANPORT_UI_SCREENSHOT"):
            driver.save_screenshot(os.environ["WANPORT_UI_SCREENSHOT"])
    finally:
        driver.quit()
        code = srv.stop()
    assert code == 0, srv.log()
    db = sqlite3.connect(os.path.join(out, "tasks.sqlite3"))
    rows = db.execute("SELECT state, request FROM tasks").fetchall()
    db.close()
    assert len(rows) == 1 and rows[0][0] == "done" and "a lighthouse in a storm" in rows[0][1]
