"""The web page in headless Chromium (Debian `chromium` + `chromium-driver`, driven by selenium):
pick a user, see the history with titles and the recommendations with scores, click for similar
items, and the embedding map. A screenshot is saved as a test artifact ($USERSEQ_TEST_ARTIFACTS,
default .pytest_cache/artifacts/)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install "
                                      "'userseq[serve]')")
pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'userseq[serve]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install 'userseq[test]')")

from serve_support import FIRST_ITEM, fresh_run, item_meta, next_item  # noqa: E402

CHROMIUM = os.environ.get("USERSEQ_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("USERSEQ_CHROMEDRIVER", "/usr/bin/chromedriver")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"headless Chromium not found ({CHROMIUM}, {CHROMEDRIVER}): install the Debian "
                "packages `chromium chromium-driver` (`.ci/run` does)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get(
    "USERSEQ_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / ".pytest_cache" / "artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn in a background thread, stopped at the end of the module."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _serve(run, meta):
    from userseq.serve.app import create_app
    from userseq.serve.service import Service

    service = Service.from_run(run, item_meta=meta)
    return service, create_app(service)


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="userseq-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # the network is closed here: without these flags Chromium waits on lookups and updates
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1300,1100"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _rows(driver, table: str) -> list[list[str]]:
    # read the table in one script call: the page may re-render it between element look-ups
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))", table)


def _wait_rows(driver, table: str, timeout: float = 30) -> list[list[str]]:
    WebDriverWait(driver, timeout).until(lambda d: len(_rows(d, table)) > 0)
    return _rows(driver, table)


def _click_hit(driver, prefix: str) -> bool:
    """Click the search hit whose text starts with `prefix` (False while it is not shown yet)."""
    return driver.execute_script(
        "const li = [...document.querySelectorAll('#item-hits li')]"
        ".find(x => x.textContent.startsWith(arguments[0]));"
        "if (li) li.click(); return !!li;", prefix)


def test_page_user_recommendations_similar_and_map(browser, tmp_path):
    run = fresh_run(tmp_path)
    service, app = _serve(run, item_meta())
    try:
        with _Server(app) as url:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(
                EC.text_to_be_present_in_element((By.ID, "info"), "sasrec"))
            assert "80 users" in browser.find_element(By.ID, "info").text
            box = browser.find_element(By.ID, "user-input")
            box.clear()
            box.send_keys("u3")
            browser.find_element(By.ID, "user-go").click()
            history = _wait_rows(browser, "#history")
            recs = _wait_rows(browser, "#recs")
            # history: newest first, with titles; the top recommendation is the next item in the
            # walk
            assert len(history) == 14 and history[0][2] == f"Film {history[0][1]}"
            last = int(history[0][1])
            assert int(recs[0][1]) == next_item(last) and recs[0][2] == f"Film {next_item(last)}"
            assert float(recs[0][3]) >= float(recs[1][3])
            assert len(recs) == 20
            # click a recommendation: similar items appear
            browser.execute_script("document.querySelector('#recs tbody tr').click()")
            similar = _wait_rows(browser, "#similar")
            assert len(similar) == 15 and all(r[1].startswith("Film ") for r in similar)
            assert str(next_item(last)) in browser.find_element(By.ID, "similar-note").text
            # similar users and the embedding map (every item drawn)
            WebDriverWait(browser, 30).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar-users li")) > 0)
            WebDriverWait(browser, 30).until(
                lambda d: d.find_element(By.ID, "map").get_attribute("data-points") == "40")
            legend = browser.find_element(By.ID, "legend").text
            assert all(g in legend for g in ("Drama", "Comedy", "Action", "Horror"))
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "web-user.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            # a new user: search titles, build a history, recommend
            for i in range(20, 25):
                box = browser.find_element(By.ID, "item-input")
                box.clear()
                box.send_keys(f"Film {FIRST_ITEM + i}")
                title = f"Film {FIRST_ITEM + i} "
                WebDriverWait(browser, 30).until(lambda d, t=title: _click_hit(d, t))
            WebDriverWait(browser, 30).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#new-history span")) == 5)
            browser.find_element(By.ID, "history-go").click()
            WebDriverWait(browser, 30).until(
                EC.text_to_be_present_in_element((By.ID, "history-note"), "new user"))
            WebDriverWait(browser, 30).until(
                lambda d: _rows(d, "#recs") and _rows(d, "#recs")[0][1] == str(FIRST_ITEM + 25))
            browser.save_screenshot(str(ARTIFACTS / "web-new-user.png"))
            # a bad user id shows a message, not a broken page
            box = browser.find_element(By.ID, "user-input")
            box.clear()
            box.send_keys("nobody")
            browser.find_element(By.ID, "user-go").click()
            WebDriverWait(browser, 30).until(
                EC.text_to_be_present_in_element((By.ID, "status"), "unknown user"))
    finally:
        service.close()


def test_page_with_movielens_titles(browser, tmp_path):
    """The synthetic items are integers 100..139, which are MovieLens-1M MovieIDs: with movies.dat
    the page shows the real titles (skipped when ML-1M is not available locally)."""
    from userseq.core.errors import UserseqError
    from userseq.data.datasets import load_item_metadata

    try:
        meta = load_item_metadata("ml-1m")
    except UserseqError as e:
        pytest.skip(f"ML-1M not available: {e}")
    titles = dict(zip(meta["item_id"].to_list(), meta["title"].to_list(), strict=True))
    run = fresh_run(tmp_path)
    service, app = _serve(run, meta)
    try:
        with _Server(app) as url:
            browser.get(url + "/?user=u3")
            history = _wait_rows(browser, "#history")
            recs = _wait_rows(browser, "#recs")
            assert history[0][2] == titles[int(history[0][1])]
            assert recs[0][2] == titles[int(recs[0][1])]
            WebDriverWait(browser, 30).until(
                lambda d: d.find_element(By.ID, "map").get_attribute("data-points") == "40")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "web-ml1m-titles.png"))
    finally:
        service.close()
