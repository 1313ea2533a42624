"""The review page in a real browser: headless Chromium opens review.html from an unpacked archive,
an expert labels cells with clicks and keys, saves, and the saved file goes back through import.

Needs Debian's chromium and chromium-driver (.ci/run installs them) and selenium (dev extra);
skipped with the reason when they are missing."""
import json
import shutil
import time
import zipfile

import pytest

from edge.cli import main
from tests.helpers import archive_manifest, export, make_session, rename_class

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.downloads = downloads
    yield driver
    driver.quit()


def _unpack(archive, folder):
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    return folder / "review.html"


def _saved_labels(folder, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob("labels-*.json")]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"the page saved no labels file into {folder}")


def test_label_with_clicks_and_keys_save_import_and_count(browser, tmp_path):
    session = make_session(tmp_path)
    archive = export([session], tmp_path / "review.zip")
    manifest, _ = archive_manifest(archive)
    page = _unpack(archive, tmp_path / "unpacked")
    browser.get(page.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == len(manifest["cells"]) >= 5
    groups = [s.get_attribute("data-suggested") for s in browser.find_elements(By.CSS_SELECTOR, "section")]
    assert groups == [n for n in manifest["class_names"] if any(c["suggested"] == n for c in manifest["cells"])]
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 0
               for img in browser.find_elements(By.CSS_SELECTOR, "img.crop"))
    progress = browser.find_element(By.ID, "progress-text")
    assert progress.text == f"labelled 0 of {len(cards)}"
    before = browser.find_element(By.ID, "provisional")
    assert before.is_displayed() and "PROVISIONAL leukocyte differential" in before.text
    assert "edge review import" in before.text

    order = [c.get_attribute("data-cell-id") for c in cards]
    names = manifest["class_names"]
    cards[0].find_element(By.CSS_SELECTOR, f"button.choice[data-value='{names[4]}']").click()
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("j", "2", "0", "u", "3")            # next; cell 1 -> class 2; 2 -> not a cell; 3 unsure; 4 -> class 3
    body.send_keys(Keys.ARROW_LEFT, Keys.BACKSPACE)     # back to cell 4 and clear it
    body.send_keys(Keys.ARROW_RIGHT, "1")               # cell 5 -> class 1 (after clearing, cell 4 stays unlabelled)
    expected = {order[0]: names[4], order[1]: names[1], order[2]: "not_a_cell", order[3]: "unsure",
                order[5]: names[0]}
    assert progress.text == f"labelled 5 of {len(cards)}"
    assert cards[2].find_element(By.CSS_SELECTOR, ".label").text == "label: not a cell"

    browser.execute_script("arguments[0].scrollIntoView()", cards[1])
    body.send_keys("c")
    overlay = browser.find_element(By.ID, "context")
    assert overlay.is_displayed()
    assert browser.execute_script("return document.getElementById('context-image').naturalWidth") == 640
    box = browser.find_element(By.ID, "context-box")
    assert box.size["width"] > 0 and box.size["height"] > 0
    body.send_keys(Keys.ESCAPE)
    assert not overlay.is_displayed()

    browser.find_element(By.ID, "reviewer").send_keys("Dr Browser")
    browser.find_element(By.ID, "save").click()
    saved = _saved_labels(browser.downloads)
    data = json.loads(saved.read_text())
    assert data["reviewer"] == "Dr Browser" and data["archive_id"] == manifest["archive_id"]
    assert {x["cell_id"]: x["label"] for x in data["labels"]} == expected

    assert main(["review", "import", "--session", str(session), "--labels", str(saved)]) == 0
    final = json.loads((session / "final_results.json").read_text())
    machine = json.loads((session / "results.json").read_text())["counts"]
    expert = {n: sum(v == n for v in expected.values()) for n in names}
    assert final["counts"] == {n: machine[n] + expert[n] for n in names}
    assert final["rejected"]["not_a_cell"] == 1 and final["rejected"]["unsure"] == 1
    assert final["rejected"]["pending"] == len(cards) - 5 and not final["complete"]
    assert final["imports"][0]["reviewer"] == "Dr Browser"


def test_class_names_with_markup_are_shown_as_text(browser, tmp_path):
    session = make_session(tmp_path, frames=1)
    hostile = '</script><script>window.pwned = 1</script><b id="injected">x</b>'
    rename_class(session, json.loads((session / "session.json").read_text())["class_names"][0], hostile)
    page = _unpack(export([session], tmp_path / "hostile.zip"), tmp_path / "unpacked")
    browser.get(page.as_uri())
    assert browser.execute_script("return window.pwned === undefined")
    assert not browser.find_elements(By.ID, "injected")
    buttons = browser.find_elements(By.CSS_SELECTOR, "button.choice")
    assert buttons and buttons[0].text == "1 " + hostile
