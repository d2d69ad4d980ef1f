"""The web page at `/` in a real browser: headless Chromium (Debian `chromium`) driven by Playwright.

Each test runs the real `exemplar-api` process, types a query like a person would, and checks
what the page shows against a direct API call for the same query. Screenshots go to
`$EXEMPLAR_TEST_ARTIFACTS/web/` (default `test-artifacts/web/`, git-ignored). Without Chromium
the tests fail (CI installs it, see `.ci/run`); they never skip.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.test_e2e import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("EXEMPLAR_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("EXEMPLAR_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
API_KEY = "web-test-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does it), "
            "or point EXEMPLAR_CHROMIUM at another Chromium binary"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=30_000)  # 5 s by default: too tight for a loaded 2-core CI machine
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def classifier_server(tmp_path_factory: pytest.TempPathFactory, classifier_index: Path) -> Iterator[str]:
    with serve(classifier_index, tmp_path_factory.mktemp("web") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def causal_server(tmp_path_factory: pytest.TempPathFactory, causal_index: Path) -> Iterator[str]:
    with serve(causal_index, tmp_path_factory.mktemp("web-lm") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, classifier_index: Path) -> Iterator[str]:
    keys = json.dumps({"web": hashlib.sha256(API_KEY.encode()).hexdigest()})
    with serve(classifier_index, tmp_path_factory.mktemp("web-keys") / "server.log", EXEMPLAR_API_KEYS=keys) as url:
        yield url


class Watched:
    """A page and what it did: every request's URL, script errors and console errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # a 4xx answer to fetch() is logged by Chromium itself; the page shows it to the user
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    def check_clean(self, origin: str) -> None:
        """No script or CSP error, and nothing fetched from anywhere but the service (no CDN)."""
        assert self.errors == []
        outside = [url for url in self.requests if not url.startswith((origin, "data:"))]
        assert outside == [], f"the page loaded something from elsewhere: {outside}"


def open_page(browser: Browser, url: str, width: int = 1280, height: int = 900) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    page = context.new_page()
    watched = Watched(page)
    page.goto(url)
    try:
        yield watched
    finally:
        context.close()


@pytest.fixture
def classifier_page(browser: Browser, classifier_server: str) -> Iterator[Watched]:
    """A fresh browser context (1280 x 900) on the classifier index's page."""
    yield from open_page(browser, classifier_server)


def api(url: str, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def format_db(db: float) -> str:
    """The page's rendering of a score (app.js formatDb)."""
    sign = "+" if db > 0 else "\u2212" if db < 0 else ""
    return f"{sign}{abs(db):.2f} dB"


def submit_and_wait(page: Page, n_cards: int) -> None:
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("#results .card")).to_have_count(n_cards)
    expect(page.locator("#compare-status")).to_have_text("Comparison ready.")


def check_results_match(page: Page, explained: dict[str, Any], compared: dict[str, Any]) -> None:
    """Cards, weights, influences, score and both charts against the API's answers."""
    cards = page.locator("#results .card")
    expect(cards).to_have_count(len(explained["examples"]))
    # the weighted examples are the explanation; those with weight 0 are shown after them, apart
    weighted = [e for e in explained["examples"] if e["weight"] > 1e-6]
    unweighted = [e for e in explained["examples"] if not e["weight"] > 1e-6]
    assert len(weighted) == explained["n_weighted"]
    expect(page.locator("#cards .card")).to_have_count(len(weighted))
    expect(page.locator("#unweighted-cards .card")).to_have_count(len(unweighted))
    if unweighted:
        expect(page.locator("#unweighted")).to_be_visible()
    else:
        expect(page.locator("#unweighted")).to_be_hidden()
    space = "exact gradients of the model" if explained["score_space"] == "full" else "projected gradients"
    expect(page.locator("#score-space")).to_contain_text(space)
    for i, example in enumerate(weighted + unweighted):
        card = cards.nth(i)
        assert card.get_attribute("data-id") == example["id"]
        assert float(card.get_attribute("data-weight") or "nan") == pytest.approx(example["weight"], abs=1e-9)
        assert float(card.get_attribute("data-influence") or "nan") == pytest.approx(example["influence"], abs=1e-9)
        expect(card.locator(".weight-value")).to_contain_text(f"{example['weight']:.3f}")
        bar = card.locator(".weight-bar").bounding_box()
        fill = card.locator(".weight-fill").bounding_box()
        assert bar is not None
        assert fill is not None
        assert fill["width"] / bar["width"] == pytest.approx(example["weight"], abs=0.01)
        if "text" in example:
            expect(card.locator(".example-text")).to_have_text(example["text"])
            expect(card.locator(".label-chip")).to_have_text(example["label"])
        else:
            expect(card.locator(".example-prompt")).to_contain_text(example["prompt"])
            expect(card.locator(".example-response")).to_contain_text(example["response"])
        link = card.get_by_role("link", name="Full example")
        assert link.get_attribute("href") == f"/v1/examples/{example['id']}"
    db = explained["score_db"]
    expect(page.locator("#score-value")).to_have_text(format_db(db))
    assert float(page.locator("#score").get_attribute("data-score") or "nan") == pytest.approx(db, abs=1e-9)
    reading = "Above 0 dB: together, these weighted examples explain" if db > 0 else "Below 0 dB"
    expect(page.locator("#score-reading")).to_contain_text(reading)
    expect(page.locator("#status")).to_contain_text(format_db(db))
    for selector, points in (("#chart-strategy .bar", compared["by_strategy"]), ("#chart-k .point", compared["by_k"])):
        drawn = page.locator(selector)
        expect(drawn).to_have_count(len(points))
        for i, point in enumerate(points):
            g = drawn.nth(i)
            assert g.get_attribute("data-strategy") == point["strategy"]
            assert int(g.get_attribute("data-k") or "0") == point["k"]
            assert float(g.get_attribute("data-db") or "nan") == pytest.approx(point["score_db"], abs=1e-9)
    chosen = next(p for p in compared["by_strategy"] if p["strategy"] == explained["strategy"])
    # the chart agrees with the explanation (full-space passes batch differently: float32 rounding)
    assert chosen["score_db"] == pytest.approx(db, abs=1e-3)


def test_query_shows_cards_weights_score_and_chart_as_the_api(classifier_page: Watched, classifier_server: str) -> None:
    p = classifier_page.page
    expect(p.locator("#index-info")).to_contain_text("Serving a classifier")
    expect(p.locator("#causal-fields")).to_be_hidden()
    p.get_by_label("Text", exact=True).fill("the cat sat on the mat")
    p.get_by_label("Examples (k)").fill("4")
    p.get_by_label("Strategy").select_option("topk")
    p.get_by_label("Estimator").select_option("grad_cos")
    submit_and_wait(p, 4)
    query = {"text": "the cat sat on the mat", "k": 4, "lam": 1, "strategy": "topk", "estimator": "grad_cos"}
    explained = api(classifier_server, "/v1/explain", query)
    compared = api(classifier_server, "/v1/compare", query)
    check_results_match(p, explained, compared)
    expect(p.locator(".predicted-label")).to_have_text(explained["prediction"]["label"])
    p.screenshot(path=str(ARTIFACTS / "classifier.png"), full_page=True)

    first = explained["examples"][0]
    p.locator("#cards .card").first.get_by_role("link", name="Full example").click()
    dialog = p.locator("#example-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator('[data-field="text"]')).to_have_text(first["text"])
    expect(dialog.locator('[data-field="id"]')).to_have_text(first["id"])
    p.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    classifier_page.check_clean(classifier_server)


def test_bad_input_shows_an_error_message(classifier_page: Watched, classifier_server: str) -> None:
    p = classifier_page.page
    expect(p.locator("#index-info")).to_contain_text("Serving a classifier")
    error = p.get_by_role("alert")
    p.get_by_role("button", name="Explain").click()
    expect(error).to_have_text("Enter a text to explain.")
    expect(p.get_by_label("Text", exact=True)).to_be_focused()

    p.get_by_label("Text", exact=True).fill("stocks fell")
    p.get_by_label("Examples (k)").fill("0")
    p.get_by_role("button", name="Explain").click()
    expect(error).to_contain_text("Could not explain this query: k: Input should be greater than or equal to 1")
    expect(p.locator("#results")).to_be_hidden()
    p.screenshot(path=str(ARTIFACTS / "error.png"), full_page=True)

    p.get_by_label("Examples (k)").fill("3")
    p.get_by_label("Strategy").select_option("self")
    p.get_by_role("button", name="Explain").click()
    expect(error).to_contain_text("not a training example")

    p.get_by_label("Strategy").select_option("balanced")
    submit_and_wait(p, 3)  # a good query clears the error
    expect(p.locator("#error")).to_be_empty()
    classifier_page.check_clean(classifier_server)


def test_keyboard_only(classifier_page: Watched, classifier_server: str) -> None:
    p = classifier_page.page
    expect(p.locator("#index-info")).to_contain_text("Serving a classifier")
    order = []
    for _ in range(8):
        p.keyboard.press("Tab")
        order.append(p.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order == ["skip-link", "text", "label", "k", "strategy", "lam", "estimator", "submit"]
    outline = p.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused control must show where focus is"

    for _ in range(3):  # submit -> estimator -> lambda -> strategy
        p.keyboard.press("Shift+Tab")
    expect(p.get_by_label("Strategy")).to_be_focused()
    p.keyboard.press("Shift+Tab")
    p.keyboard.press("ControlOrMeta+a")
    p.keyboard.type("3")
    for _ in range(2):  # k -> label -> text
        p.keyboard.press("Shift+Tab")
    expect(p.get_by_label("Text", exact=True)).to_be_focused()
    p.keyboard.type("what a boring afternoon")
    p.keyboard.press("Enter")  # Enter in the text submits
    expect(p.locator("#results .card")).to_have_count(3)
    expect(p.locator("#compare-status")).to_have_text("Comparison ready.")
    query = {"text": "what a boring afternoon", "k": 3, "lam": 1, "strategy": "reconstruct", "estimator": "grad_dot"}
    check_results_match(p, api(classifier_server, "/v1/explain", query), api(classifier_server, "/v1/compare", query))

    link = p.locator("#cards .card").first.get_by_role("link", name="Full example")
    for _ in range(40):  # keep tabbing until the first card's link has focus
        p.keyboard.press("Tab")
        if link.evaluate("el => el === document.activeElement"):
            break
    expect(link).to_be_focused()
    p.keyboard.press("Enter")
    expect(p.locator("#example-dialog")).to_be_visible()
    p.keyboard.press("Escape")
    expect(p.locator("#example-dialog")).to_be_hidden()
    expect(link).to_be_focused()  # focus returns to where it was
    classifier_page.check_clean(classifier_server)


def test_narrow_screen_stacks_everything(browser: Browser, classifier_server: str) -> None:
    for watched in open_page(browser, classifier_server, width=375, height=740):
        p = watched.page
        expect(p.locator("#index-info")).to_contain_text("Serving a classifier")
        p.get_by_label("Text", exact=True).fill("the team won the final")
        p.get_by_label("Examples (k)").fill("5")
        submit_and_wait(p, 5)
        overflow = p.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a narrow screen"
        boxes = [p.locator(f"#{name}").bounding_box() for name in ("k", "strategy", "lam", "estimator")]
        assert all(b is not None for b in boxes)
        tops = [b["y"] for b in boxes if b is not None]
        assert tops == sorted(tops)
        assert len(set(tops)) == 4, "the options should stack on a narrow screen"
        cards = [p.locator("#results .card").nth(i).bounding_box() for i in range(2)]
        assert cards[0] is not None
        assert cards[1] is not None
        assert cards[1]["y"] > cards[0]["y"]
        assert cards[0]["x"] == cards[1]["x"], "one column of cards"
        assert cards[0]["x"] + cards[0]["width"] <= 375
        charts = [p.locator(f"#chart-{name} svg").bounding_box() for name in ("strategy", "k")]
        assert all(c is not None and c["x"] + c["width"] <= 375 for c in charts)
        p.screenshot(path=str(ARTIFACTS / "narrow.png"), full_page=True)
        watched.check_clean(classifier_server)


def test_causal_lm_index_asks_for_prompt_and_response(browser: Browser, causal_server: str) -> None:
    for watched in open_page(browser, causal_server):
        p = watched.page
        expect(p.locator("#index-info")).to_contain_text("Serving a causal language model")
        expect(p.get_by_label("Text", exact=True)).to_be_hidden()
        p.get_by_label("Prompt").fill("is this message spam or ham")
        p.get_by_label("Response").fill("spam")
        p.get_by_label("Examples (k)").fill("3")
        submit_and_wait(p, 3)
        query = {
            "prompt": "is this message spam or ham",
            "response": "spam",
            "k": 3,
            "lam": 1,
            "strategy": "reconstruct",
            "estimator": "grad_dot",
        }
        check_results_match(p, api(causal_server, "/v1/explain", query), api(causal_server, "/v1/compare", query))
        expect(p.locator("#prediction")).to_contain_text("Response log-probability")
        p.screenshot(path=str(ARTIFACTS / "causal-lm.png"), full_page=True)
        watched.check_clean(causal_server)


def test_an_empty_response_explains_what_the_model_answers(browser: Browser, causal_server: str) -> None:
    for watched in open_page(browser, causal_server):
        p = watched.page
        p.get_by_label("Prompt").fill("is this message spam or ham")
        p.get_by_label("Examples (k)").fill("3")
        submit_and_wait(p, 3)
        query = {"prompt": "is this message spam or ham", "k": 3, "lam": 1, "strategy": "reconstruct"}
        explained = api(causal_server, "/v1/explain", {**query, "estimator": "grad_dot"})
        generated = explained["generated_response"]
        assert generated
        expect(p.get_by_label("Response")).to_have_value(generated)
        expect(p.locator("#prediction")).to_contain_text(f"The model answered {generated}")
        compared = api(causal_server, "/v1/compare", {**query, "estimator": "grad_dot", "response": generated})
        check_results_match(p, explained, compared)
        p.screenshot(path=str(ARTIFACTS / "causal-lm-generated.png"), full_page=True)
        watched.check_clean(causal_server)


def test_api_key_is_asked_for_and_sent(browser: Browser, keyed_server: str) -> None:
    for watched in open_page(browser, keyed_server):
        p = watched.page
        key = p.get_by_label("This service needs an API key")
        expect(key).to_be_visible()
        expect(key).to_be_focused()
        expect(p.get_by_role("alert")).to_contain_text("needs an API key")
        key.fill("wrong")
        p.get_by_role("button", name="Use this key").click()
        expect(p.get_by_role("alert")).to_contain_text("unknown API key")
        key.fill(API_KEY)
        p.keyboard.press("Enter")
        expect(p.locator("#index-info")).to_contain_text("Serving a classifier")
        expect(p.get_by_label("Text", exact=True)).to_be_focused()
        p.keyboard.type("stocks fell sharply")
        p.keyboard.press("Enter")
        expect(p.locator("#results .card")).to_have_count(5)
        expect(p.locator("#compare-status")).to_have_text("Comparison ready.")
        query = {"text": "stocks fell sharply", "k": 5, "lam": 1, "strategy": "reconstruct", "estimator": "grad_dot"}
        check_results_match(
            p,
            api(keyed_server, "/v1/explain", query, **{"X-API-Key": API_KEY}),
            api(keyed_server, "/v1/compare", query, **{"X-API-Key": API_KEY}),
        )
        with p.expect_request(lambda r: "/v1/examples/" in r.url) as lookup:
            p.locator("#cards .card").first.get_by_role("link", name="Full example").click()
        expect(p.locator("#example-dialog")).to_be_visible()
        assert lookup.value.headers.get("x-api-key") == API_KEY  # the key goes with every call
        watched.check_clean(keyed_server)


@pytest.fixture(scope="module")
def every_estimator_server(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Iterator[str]:
    """A classifier index built with a second checkpoint, so that it serves every registered estimator."""
    from exemplar.build import build_index
    from exemplar.gradients import ProjectionConfig
    from exemplar.jsonl import read_examples_jsonl
    from exemplar.models import load_model
    from tests.conftest import classification_rows, write_jsonl
    from tests.tiny_models import LABELS, save_classifier

    tmp = tmp_path_factory.mktemp("registry")
    data = write_jsonl(tmp / "train.jsonl", classification_rows())
    examples, _ = read_examples_jsonl(data, "classification", LABELS)
    early = load_model(save_classifier(tmp / "early", seed=7), "classification")
    build_index(
        load_model(classifier_dir, "classification"),
        examples,
        tmp / "idx",
        ProjectionConfig(params="linear", proj_dim=16),
        max_length=32,
        checkpoints=[(early, 0.5)],
    )
    with serve(tmp / "idx", tmp / "server.log") as url:
        yield url


def test_every_registered_strategy_and_estimator_is_accepted_listed_and_offered(
    browser: Browser, every_estimator_server: str
) -> None:
    """The registries are the one place names live: the API schema accepts each name, GET /v1/index
    lists it with its label and summary, and the page offers it with that label and help."""
    from exemplar.estimators import ESTIMATORS
    from exemplar.strategies import STRATEGIES
    from tests.conftest import classification_rows

    url = every_estimator_server
    training = classification_rows()[0]
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()["components"]["schemas"]["ExplainRequest"]
    assert schema["properties"]["strategy"]["enum"] == list(STRATEGIES)
    assert schema["properties"]["estimator"]["enum"] == list(ESTIMATORS)
    for name in STRATEGIES:  # "self" needs a training example as the query
        body = {"text": training["text"], "label": training["label"], "k": 2, "strategy": name}
        assert api(url, "/v1/explain", body)["options"]["strategy"] == name
    for name in ESTIMATORS:
        body = {"text": "the cat sat", "k": 2, "strategy": "topk", "estimator": name}
        assert api(url, "/v1/explain", body)["options"]["estimator"] == name
    info = httpx.get(f"{url}/v1/index", timeout=10).json()
    assert info["strategies"] == list(STRATEGIES)
    assert info["estimators"] == list(ESTIMATORS)
    for listed, registry in (("strategy_descriptions", STRATEGIES), ("estimator_descriptions", ESTIMATORS)):
        assert info[listed] == {n: {"label": r.label, "summary": r.summary} for n, r in registry.items()}
    for watched in open_page(browser, url):
        page = watched.page
        for select, registry in (("strategy", STRATEGIES), ("estimator", ESTIMATORS)):
            options = page.locator(f"#{select} option")
            expect(options).to_have_count(len(registry))
            assert options.evaluate_all("os => os.map(o => o.value)") == list(registry)
            assert options.evaluate_all("os => os.map(o => o.textContent)") == [r.label for r in registry.values()]
            for name, r in registry.items():
                page.locator(f"#{select}").select_option(name)
                expect(page.locator(f"#{select}-help")).to_have_text(r.summary)
        watched.check_clean(url)
