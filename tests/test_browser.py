"""Reports in a real browser: headless Chromium opens report.html and the run-all index, every
figure loads, the verdict is visible; screenshots are saved next to the reports.

Needs Debian's chromium and chromium-driver (installed by .ci/run) and selenium (test extra);
skipped, saying why, where they are missing.
"""

import shutil
from pathlib import Path

import pytest

import implicitreg
from implicitreg.report.index import write_index

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")

TINY = {"models": ["mlp"], "mlp.hidden": [16], "data.n_train": 200, "data.n_test": 100,
        "train.max_steps": 40, "train.eval_every": 20}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,2000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run_all_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("all")
    result = implicitreg.run("explicit-vs-implicit", quick=True, seeds=1, threads=1,
                             out=base / "explicit-vs-implicit", **TINY)
    write_index(base, [("explicit-vs-implicit", result.summary)])
    return base


def figures_loaded(driver) -> tuple[int, int]:
    """(images, images that decoded with a non-zero size)."""
    return driver.execute_script(
        "const imgs = Array.from(document.images);"
        "return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length];")


def test_report_shows_figures_and_verdict(browser, run_all_dir):
    report = run_all_dir / "explicit-vs-implicit" / "report.html"
    browser.get(report.as_uri())
    total, loaded = figures_loaded(browser)
    assert total == len(list((run_all_dir / "explicit-vs-implicit" / "figures").glob("*.png"))) > 0
    assert loaded == total
    text = browser.find_element("tag name", "body").text
    verdict = implicitreg.runner.summarize(run_all_dir / "explicit-vs-implicit")[0]["verdict"]
    assert f"Verdict: {verdict.upper()}" in text
    shot = run_all_dir / "explicit-vs-implicit" / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_index_links_to_the_report_and_shows_the_verdict(browser, run_all_dir):
    browser.get((run_all_dir / "index.html").as_uri())
    text = browser.find_element("tag name", "body").text
    assert "explicit-vs-implicit" in text and any(v in text for v in ("PASS", "FAIL", "INCONCLUSIVE"))
    link = browser.find_element("link text", "explicit-vs-implicit")
    link.click()
    assert Path(browser.current_url.removeprefix("file://")).name == "report.html"
    assert browser.save_screenshot(str(run_all_dir / "index.png"))


@pytest.fixture(scope="module")
def tracker_dir(tmp_path_factory):
    """Two Trackers (SGD, Adam) on a small Conv2d + BatchNorm net on the digits, in a plain loop."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn

    data = load_digits()
    x, y = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(data.target)
    out = tmp_path_factory.mktemp("tracked") / "compare"
    for name in ("sgd", "adam"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(64, 10))
        opt = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)(model.parameters(), lr=0.05 if name == "sgd"
                                                                         else 0.01)
        with implicitreg.Tracker(out, ["l2_norm", "top_hessian_eigenvalue"], every=10, train_data=(x[:200], y[:200]),
                                 test_data=(x[1500:], y[1500:]), name=name, config={"optimizer": name},
                                 model=model) as tracker:
            for step in range(21):
                model.train()
                loss = F.cross_entropy(model(x[step * 32:(step + 1) * 32]), y[step * 32:(step + 1) * 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                tracker.step(model, step)
    return out


def test_tracker_report_shows_its_figures(browser, tracker_dir):
    browser.get((tracker_dir / "report.html").as_uri())
    total, loaded = figures_loaded(browser)
    assert total == len(list((tracker_dir / "figures").glob("*.png"))) == 4  # accuracy, loss, two measures
    assert loaded == total
    text = browser.find_element("tag name", "body").text
    assert "open experiment" in text and "top_hessian_eigenvalue" in text and "adam" in text
    shot = tracker_dir / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
