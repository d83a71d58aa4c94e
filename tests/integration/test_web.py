"""The web page end to end: a real uvicorn server, Debian's headless chromium driven by
Playwright (never Playwright's own browser download): search, sense search with the word
highlighted, the attention map drawn, and an error shown in the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ctxvec.config import load_config
from ctxvec.ingest.corpus import iter_corpus
from ctxvec.workspace import Workspace
from tests.integration.conftest import TINY, TINY_OVERRIDES, uvicorn_in_thread

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def page_url(served_workspace):
    from ctxvec.serve.app import create_app

    app = create_app(Workspace(served_workspace.home), load_config(TINY, TINY_OVERRIDES))
    with uvicorn_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            # (an HTTP error status is logged by chromium as "Failed to load resource": the
            # page is expected to show those, so only script errors count)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" and "Failed to load resource" not in m.text else None)
            page.goto(page_url + "/")
            yield page, problems
        finally:
            browser.close()


def test_search_senses_and_attention_in_the_page(browser_page, served_workspace):
    from playwright.sync_api import expect

    page, problems = browser_page
    docs = [r for b in iter_corpus(served_workspace.summary["snapshot"]["corpus"])
            for r in b.to_pylist()]
    doc = max(docs[:40], key=lambda d: len(d["text"]))
    expect(page.locator("#status")).to_contain_text("model version 1")

    # search: result rows with rank, score, title, doc id and snippet; its own text first
    page.get_by_label("Query", exact=True).fill(doc["text"][:300])
    page.locator("#k").fill("5")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#results li")
    expect(rows).to_have_count(5)
    expect(rows.first.locator(".docid")).to_have_text(doc["doc_id"])
    expect(rows.first.locator(".score")).to_have_text(re.compile(r"^-?\d\.\d{4}$"))
    expect(rows.first.locator(".snippet")).not_to_be_empty()
    expect(page.locator("#search-meta")).to_contain_text("model version 1")

    # the attention map of the query, drawn on the canvas
    canvas = page.locator("#attention")
    expect(canvas).to_have_attribute("data-tokens", re.compile(r"^\d+$"))
    n_tokens = int(canvas.get_attribute("data-tokens"))
    assert n_tokens >= 3
    inked = page.evaluate("""() => {
        const c = document.getElementById('attention');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 200 && d[i + 2] > d[i]) n++;
        return n;  // blue-ish cells
    }""")
    assert inked > 100, inked

    # sense search: the word is highlighted in each hit's snippet
    sentence = doc["text"].split(". ")[0][:300]
    word = next(w for w in sentence.split() if w.isalpha() and len(w) >= 6)
    page.get_by_label("Word", exact=True).fill(word)
    page.get_by_label("Sentence using the word").fill(sentence)
    page.get_by_role("button", name="Find senses").click()
    marks = page.locator("#sense-results li mark")
    expect(marks.first).to_be_visible()
    n_hits = page.locator("#sense-results li").count()
    assert n_hits >= 1 and marks.count() == n_hits
    for text in marks.all_inner_texts():
        assert text.lower() == word.lower()

    # an error the server reports is shown in the page
    page.get_by_label("Word", exact=True).fill("zzyzxq")
    page.get_by_label("Sentence using the word").fill("the zzyzxq went by")
    page.get_by_role("button", name="Find senses").click()
    expect(page.get_by_role("alert")).to_contain_text("404")
    expect(page.get_by_role("alert")).to_contain_text("zzyzxq")
    assert not problems, problems
