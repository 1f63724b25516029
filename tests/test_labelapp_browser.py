"""The labeling app in a real headless Chromium (Debian's, via pytest-playwright): keyboard labelling,
mouse selection, saving, the two-tab conflict, and labels given for another file of the episode.
Skipped where no `chromium` is installed."""

from __future__ import annotations

import re
import threading

import pytest

from autosink.data.labels import read_human_label_file, read_human_labels, write_human_labels
from autosink.labelapp import LabelData, LabelServer
from tests.conftest import CHROMIUM
from tests.test_labelapp_api import EP, build_project, episode_sha

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no `chromium` on PATH (apt-get install -y chromium); Playwright's own browser download is not used",
    ),
]

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return build_project(tmp_path_factory.mktemp("labelapp-browser"))


@pytest.fixture
def app(project, tmp_path):
    labels = tmp_path / "labels"
    data = LabelData(project["extracted"], labels, project["store"], root=tmp_path)
    server = LabelServer(data, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}/", labels / f"{EP}.csv"
    server.shutdown()
    server.server_close()
    thread.join(5)


def watch_errors(page, errors: list[str] | None = None) -> list[str]:
    """Console errors (CSP violations included) and uncaught exceptions of a page."""
    errors = [] if errors is None else errors
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def open_episode(page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#episode-rows tr")).to_have_count(3)
    page.get_by_role("link", name=EP).click()
    expect(page.locator("#strip .cell")).to_have_count(20)
    expect(page.locator("#frame")).to_have_attribute("src", re.compile(r"/img/.+/frame/\d+\.png"))


def test_label_a_range_with_the_keyboard_and_save(page, app, project):
    url, csv = app
    errors = watch_errors(page)
    open_episode(page, url)
    expect(page.locator("#strip .cell.pending")).to_have_count(4)  # frames 5-8: before the user's override
    page.keyboard.press("Home")
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    for _ in range(3):
        page.keyboard.press("Shift+ArrowRight")
    expect(page.locator("#strip .cell.sel")).to_have_count(4)
    expect(page.locator("#selection")).to_contain_text("Frames 5–8 selected (4)")
    page.keyboard.press("1")
    expect(page.locator("#dirty")).to_have_text("● 4 unsaved changes")
    expect(page.locator("#strip .cell.pending")).to_have_count(0)
    assert not csv.exists()
    page.keyboard.press("s")
    expect(page.locator("#status")).to_contain_text("Saved 4 labels")
    expect(page.locator("#dirty")).to_be_hidden()
    assert read_human_labels(csv) == {5: 1, 6: 1, 7: 1, 8: 1}
    assert csv.read_text() == f"# episode sha256: {episode_sha(project)}\nframe_index,label\n5,1\n6,1\n7,1\n8,1\n"
    # The list now shows the episode as reviewed.
    page.get_by_role("link", name="Episodes").click()
    row = page.locator(f'#episode-rows tr[data-episode="{EP}"]')
    expect(row.locator("td").nth(3)).to_have_text("0")
    expect(row.locator("td").nth(4)).to_contain_text("4/4")
    assert errors == []


def test_mouse_drag_buttons_and_next_review(page, app):
    url, csv = app
    errors = watch_errors(page)
    open_episode(page, url)
    cells = page.locator("#strip .cell")
    cells.nth(2).hover()
    page.mouse.down()
    cells.nth(3).hover()
    cells.nth(4).hover()
    page.mouse.up()
    expect(page.locator("#strip .cell.sel")).to_have_count(3)
    page.get_by_role("button", name="off").click()
    page.keyboard.press("n")  # the first frame still needing review
    expect(page.locator("#cur-title")).to_contain_text("Frame 5 ")
    page.keyboard.press("x")  # one frame: labelled, then the cursor moves on
    expect(page.locator("#cur-title")).to_contain_text("Frame 6 ")
    # Unsaved changes: leaving the page or the episode asks first (declined here: we stay).
    page.once("dialog", lambda d: d.dismiss())
    with page.expect_event("dialog") as dialog:
        page.get_by_role("link", name="Episodes").click()
    assert dialog.value.type == "confirm" and "4 unsaved changes" in dialog.value.message
    expect(page).to_have_url(re.compile(rf"#/episode/{EP}$"))
    expect(page.locator("#episode-view")).to_be_visible()
    # The beforeunload handler cancels (that is what makes the browser ask); dispatched by hand
    # because Chromium's own prompt depends on user-activation heuristics.
    assert page.evaluate("""() => {
        const e = new Event("beforeunload", { cancelable: true });
        window.dispatchEvent(e);
        return e.defaultPrevented;
    }""")
    expect(page.locator("#dirty")).to_have_text("● 4 unsaved changes")
    page.keyboard.press("Control+s")
    expect(page.locator("#status")).to_contain_text("Saved 4 labels")
    assert read_human_labels(csv) == {2: 0, 3: 0, 4: 0, 5: -1}
    assert errors == []


def test_second_tab_saving_stale_labels_is_told_and_can_reapply(page, app):
    url, csv = app
    tab1, tab2 = page, page.context.new_page()
    errors = watch_errors(tab2, watch_errors(tab1))
    open_episode(tab1, url)
    open_episode(tab2, url)
    tab1.keyboard.press("Home")
    tab1.keyboard.press("0")
    tab1.keyboard.press("s")
    expect(tab1.locator("#status")).to_contain_text("Saved 1 labels")
    saved = csv.read_text()

    tab2.keyboard.press("End")
    tab2.keyboard.press("1")
    tab2.keyboard.press("s")
    banner = tab2.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("saved elsewhere")
    expect(banner).to_contain_text("Nothing was overwritten")
    expect(tab2.locator("#dirty")).to_have_text("● 1 unsaved change")
    assert csv.read_text() == saved

    tab2.get_by_role("button", name="Reload and re-apply my changes").click()
    expect(banner).to_be_hidden()
    tab2.keyboard.press("s")
    expect(tab2.locator("#status")).to_contain_text("Saved 2 labels")
    assert read_human_labels(csv) == {0: 0, 19: 1}
    assert [e for e in errors if "409 (Conflict)" not in e] == []  # Chromium logs the expected 409


def test_labels_for_another_file_of_the_episode_are_shown_as_such_and_replaced_on_save(page, app, project):
    url, csv = app
    errors = watch_errors(page)
    write_human_labels(csv, {0: 1, 1: 1, 2: 1}, "0" * 64)  # given for a file the lake no longer holds
    page.goto(url)
    row = page.locator(f'#episode-rows tr[data-episode="{EP}"]')
    expect(row.locator("td").nth(6)).to_have_text("labels for another file of this episode: not applied")
    expect(row.locator("td").nth(5)).to_have_text("0")
    page.get_by_role("link", name=EP).click()
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("3 labels given for another file of this episode")
    expect(page.locator("#strip .cell .lane.h.none")).to_have_count(20)  # none of them shown as labels
    expect(page.locator("#save-btn")).to_have_class(re.compile("attention"))
    page.locator("#strip").focus()
    page.keyboard.press("s")  # no change made: saving still replaces them (with no labels)
    expect(page.locator("#status")).to_contain_text("Saved 0 labels")
    expect(banner).to_be_hidden()
    doc = read_human_label_file(csv)
    assert doc.labels == {} and doc.episode_sha256 == episode_sha(project)
    assert errors == []
