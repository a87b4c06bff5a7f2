"""The evaluate stage's report.html, opened in a real headless Chromium (Debian's chromium and
chromium-driver, which `make test` installs), and its markdown console tables."""

from __future__ import annotations

import base64
import io
import os
import shutil

import pytest
from PIL import Image, ImageDraw
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from pipelines.evaluation.report import render_report
from pipelines.evaluation.tables import compare_table, markdown_table

INJECTED = "<script>window.__pwned = 1; alert('pwned')</script>"
TITLE = "Evaluation of pretrain <b>1f93d581</b>"


def shape_png(shape: str, colour: str, size: int = 32) -> bytes:
    """A filled circle, square or triangle on white, PNG-encoded."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 8, size // 8, size - size // 8, size - size // 8)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def digit_png(digit: int) -> bytes:
    """An 8x8 grey image, like scikit-learn's digits (small enough to be shown pixelated)."""
    image = Image.new("L", (8, 8), 0)
    ImageDraw.Draw(image).rectangle((1, 1, 6, 6), outline=255 if digit % 2 else 128)
    image.putpixel((digit % 8, digit // 8 + 3), 255)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def confusion_matrix(classes: int) -> list[list[int]]:
    # mostly right, with one confusion per row into the next class
    return [[8 if i == j else (2 if j == (i + 1) % classes else 0) for j in range(classes)]
            for i in range(classes)]


def results_fixture() -> list[dict]:
    """Five suites, one of each detail kind, with a caption that holds markup."""
    data = {"stage": "shards", "key": "17a90de9b45cbb6e", "split": "val"}
    model = {"stage": "pretrain", "kind": "pretrain", "key": "1f93d5811ec23207"}
    red_circle, blue_square = shape_png("circle", "red"), shape_png("square", "blue")
    return [
        {"suite": "digits-zero-shot", "task": "zero_shot_classification",
         "data": {**data, "n": 100, "modality": "image"}, "model": model,
         "metrics": {"acc1": 0.8, "acc5": 0.98, "mean_per_class_recall": 0.8},
         "baselines": {"acc1": 0.1, "acc5": 0.5, "mean_per_class_recall": 0.1},
         "baseline_name": "chance", "lower_is_better": [], "headline": "acc1",
         "settings": {"prompts": ["a photo of the digit {}"], "batch_size": 64},
         "details": {"confusion": {"labels": [str(d) for d in range(10)],
                                   "matrix": confusion_matrix(10)}}},
        {"suite": "shapes-retrieval", "task": "retrieval",
         "data": {**data, "n": 3, "modality": "image"}, "model": model,
         "metrics": {"i2t_r1": 0.6667, "i2t_r5": 1.0, "t2i_r1": 0.3333, "mean_rank": 1.6667},
         "baselines": {"i2t_r1": 0.3333, "mean_rank": 2.0}, "baseline_name": "chance",
         "lower_is_better": ["mean_rank"], "headline": "i2t_r1",
         "settings": {"gallery": {"size": 3, "dedupe": True}},
         "details": {"retrieval_examples": [
             {"direction": "image_to_text", "query": {"image_png": red_circle},
              "hits": [{"text": "a red circle", "positive": True},
                       {"text": "a blue square", "positive": False}]},
             {"direction": "text_to_image", "query": {"text": "a blue square"},
              "hits": [{"image_png": red_circle, "positive": False},
                       {"image_png": blue_square, "positive": True}]}]}},
        {"suite": "shapes-captioning", "task": "captioning",
         "data": {**data, "n": 2, "modality": "image"}, "model": model,
         "metrics": {"cider": 0.42, "bleu4": 0.17},
         "baselines": {"cider": 0.05, "bleu4": 0.2},
         "baseline_name": "most frequent training caption", "lower_is_better": [],
         "headline": "cider", "settings": {"max_new_tokens": 16, "temperature": 0.0},
         "details": {"samples": [
             {"id": "caption/1", "image_png": shape_png("triangle", "green", 16),
              "prediction": INJECTED, "references": ["a green triangle"],
              "scores": {"cider": 0.0}},
             {"id": "caption/2", "image_png": red_circle, "prediction": "a red circle",
              "references": ["a red circle", "a circle"], "scores": {"cider": 1.2}}]}},
        {"suite": "easy-vqa", "task": "vqa", "data": {**data, "n": 3, "modality": "image"},
         "model": model, "metrics": {"accuracy": 0.6667}, "baselines": {"accuracy": 0.5},
         "baseline_name": "majority answer", "lower_is_better": [], "headline": "accuracy",
         "settings": {}, "details": {"samples": [
             {"id": "easy-vqa/1", "image_png": blue_square, "prompt": "what shape is this?",
              "prediction": "Square", "references": ["square"]},
             {"id": "easy-vqa/2", "image_png": red_circle, "prompt": "what colour is it?",
              "prediction": "red", "references": ["red"]},
             {"id": "easy-vqa/3", "image_png": digit_png(3), "prompt": "is it a circle?",
              "prediction": "yes", "references": ["no"]}]}},
        {"suite": "spoken-digits-asr", "task": "asr",
         "data": {**data, "n": 2, "modality": "audio"}, "model": model,
         "metrics": {"wer": 0.25, "cer": 0.1}, "baselines": {"wer": 1.0, "cer": 1.0},
         "baseline_name": "empty transcript", "lower_is_better": ["wer", "cer"],
         "headline": "wer", "settings": {"beam": 1},
         "details": {"samples": [
             {"id": "digits/1", "audio": "en/digits/1.wav", "prediction": "one",
              "references": ["one"], "scores": {"wer": 0.0}},
             {"id": "digits/2", "audio": "en/digits/2.wav", "prediction": "to too",
              "references": ["two"], "scores": {"wer": 2.0}}],
             # every utterance, past the two samples shown with their media
             "utterances": [{"id": "digits/1", "wer": 0.0, "prediction": "one", "reference": "one"},
                            {"id": "digits/2", "wer": 2.0, "prediction": "to too", "reference": "two"},
                            {"id": "digits/3", "wer": 0.5, "prediction": "three", "reference": "three <b>3</b>"}]}},
    ]


IMAGES_IN_FIXTURE = 3 + 2 + 3  # retrieval (a query, two hits), captioning, vqa


@pytest.fixture(scope="module")
def report(tmp_path_factory, browser):
    """The fixture results' report, written and loaded into the browser."""
    path = tmp_path_factory.mktemp("report") / "report.html"
    render_report(results_fixture(), str(path), title=TITLE, subtitle="pipeline demo · " + INJECTED)
    browser.get(path.as_uri())
    return path


def cell_texts(row) -> list[str]:
    return [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]


def test_summary_has_a_row_per_suite_with_headline_and_baseline(browser, report):
    rows = browser.find_elements(By.CSS_SELECTOR, "table.summary tbody tr")
    assert len(rows) == 5
    by_suite = {cell_texts(r)[0]: cell_texts(r) for r in rows}
    # Suite, Task, Data, n, Headline, arrow, Value, Baseline, Δ (every suite scored one model,
    # named once above the table rather than in a column)
    assert by_suite["digits-zero-shot"][3:] == ["100", "acc1", "↑", "0.8000", "0.1000", "+0.7000"]
    assert by_suite["spoken-digits-asr"][3:] == ["2", "wer", "↓", "0.2500", "1.0000", "-0.7500"]
    assert by_suite["easy-vqa"][2] == "shards 17a90de9b45cbb6e val"
    summary = browser.find_element(By.ID, "summary")
    assert "model pretrain 1f93d5811ec23207" in summary.find_element(By.CLASS_NAME, "meta").text
    # a WER below the empty transcript's beats it
    asr_delta = rows[4].find_elements(By.CSS_SELECTOR, "td")[-1]
    assert "better" in asr_delta.get_attribute("class")
    # the summary links to each suite's section
    assert rows[1].find_element(By.TAG_NAME, "a").get_attribute("href").endswith("#suite-1")


def test_each_suite_lists_every_metric_against_its_baseline(browser, report):
    sections = browser.find_elements(By.CSS_SELECTOR, "section.suite")
    assert len(sections) == 5
    for section, result in zip(sections, results_fixture()):
        rows = section.find_elements(By.CSS_SELECTOR, "table.metrics tbody tr")
        assert len(rows) == len(result["metrics"])
        for row, (metric, value) in zip(rows, result["metrics"].items()):
            cells = cell_texts(row)
            assert cells[0] == metric and cells[2] == f"{value:.4f}"
            baseline = result["baselines"].get(metric)
            assert cells[3] == ("" if baseline is None else f"{baseline:.4f}")
        assert section.find_element(By.CSS_SELECTOR, "h2 .tag").text == result["task"].replace("_", " ")
        # textContent: the table heading is upper-cased by CSS
        content = section.get_attribute("textContent")
        assert result["baseline_name"] in content and result["model"]["key"] in content
    bleu = sections[2].find_elements(By.CSS_SELECTOR, "table.metrics tbody tr")[1]
    assert "worse" in bleu.find_elements(By.CSS_SELECTOR, "td")[-1].get_attribute("class")
    assert "gallery.size" in sections[1].text  # nested settings flatten to dotted keys


def test_every_image_decodes_and_nothing_is_fetched(browser, report):
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    assert len(images) == IMAGES_IN_FIXTURE
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert {src for _, _, src in images} == {"data:image/png;base64,"}
    external = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src],[href]'))"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))"
        ".filter(u => !u.startsWith('data:') && !u.startsWith('#'))")
    assert external == []


def test_confusion_matrix_is_c_by_c_with_its_labels(browser, report):
    table = browser.find_element(By.CSS_SELECTOR, "#suite-0 table.confusion")
    cells = table.find_elements(By.CSS_SELECTOR, "tbody td")
    assert len(cells) == 100
    assert [th.text for th in table.find_elements(By.CSS_SELECTOR, "tbody th")] == [str(d) for d in range(10)]
    assert [int(c.text) for c in cells[:10]] == confusion_matrix(10)[0]
    # the diagonal is coloured, an empty cell is not
    assert cells[0].value_of_css_property("background-color") != cells[5].value_of_css_property(
        "background-color")


def test_retrieval_examples_mark_their_positives(browser, report):
    examples = browser.find_elements(By.CSS_SELECTOR, "#suite-1 .rx")
    assert len(examples) == 2
    assert [len(e.find_elements(By.CSS_SELECTOR, ".hit")) for e in examples] == [2, 2]
    positives = browser.find_elements(By.CSS_SELECTOR, "#suite-1 .hit.positive")
    assert len(positives) == 2 and all("match" in p.text for p in positives)
    assert positives[0].find_element(By.CSS_SELECTOR, ".caption").text == "a red circle"
    assert positives[1].find_elements(By.TAG_NAME, "img")  # the blue square's thumbnail


def test_samples_show_predictions_exact_matches_and_wer(browser, report):
    vqa = browser.find_elements(By.CSS_SELECTOR, "#suite-3 table.samples tbody tr")
    assert len(vqa) == 3
    # "Square" matches "square" (case aside); "yes" against "no" does not
    assert ["exact" in (r.get_attribute("class") or "") for r in vqa] == [True, True, False]
    assert "what shape is this?" in vqa[0].text
    asr = browser.find_elements(By.CSS_SELECTOR, "#suite-4 table.samples tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, ".score").text for r in asr] == ["wer 0.0000", "wer 2.0000"]
    assert "en/digits/2.wav" in asr[1].text


def test_asr_lists_every_utterance_with_its_wer(browser, report):
    rows = browser.find_elements(By.CSS_SELECTOR, "#suite-4 table.utterances tbody tr")
    assert [cell_texts(r) for r in rows] == [
        ["1", "digits/1", "wer 0.0000", "one", "one"], ["2", "digits/2", "wer 2.0000", "to too", "two"],
        ["3", "digits/3", "wer 0.5000", "three", "three <b>3</b>"]]
    heading = browser.find_elements(By.CSS_SELECTOR, "#suite-4 h3")[-1]
    assert heading.text.lower() == "wer per utterance (3)"
    # coloured from green (0) to red (1 or more), as the samples' scores
    colours = [r.find_element(By.CSS_SELECTOR, ".score").value_of_css_property("background-color") for r in rows]
    assert len(set(colours)) == 3


def test_asr_rows_and_utterances_carry_each_wer():
    """The asr suite's predictions.jsonl rows and report utterances from jiwer's per-utterance WER."""
    from pipelines.evaluation.generation_suites import _predictions, _utterances
    from tasks.text_metrics import asr_scores

    items = [{"sample_id": "digits/1", "references": ["one"]}, {"sample_id": "digits/2", "references": ["two"]},
             {"sample_id": "hello", "references": ["hello world"]}]
    predictions = {"digits/1": "one", "digits/2": "to too", "hello": "hello"}
    refs = [r["references"][0] for r in items]
    out = asr_scores([predictions[r["sample_id"]] for r in items], refs)
    scores = {r["sample_id"]: {"wer": w} for r, w in zip(items, out["per_utterance_wer"])}
    rows = _predictions(items, predictions, scores)
    assert [(r["id"], r["prediction"], r["references"], r["wer"]) for r in rows] == [
        ("digits/1", "one", ["one"], 0.0), ("digits/2", "to too", ["two"], 2.0), ("hello", "hello", ["hello world"], 0.5)]
    utterances = _utterances(items, refs, predictions, scores)
    assert [(u["id"], u["reference"], u["wer"]) for u in utterances] == [
        ("digits/1", "one", 0.0), ("digits/2", "two", 2.0), ("hello", "hello world", 0.5)]


def test_markup_in_results_shows_as_text_and_never_runs(browser, report):
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert browser.execute_script("return [window.__pwned, document.scripts.length]") == [None, 0]
    prediction = browser.find_element(By.CSS_SELECTOR, "#suite-2 table.samples tbody tr td.prediction")
    assert prediction.text == INJECTED
    assert browser.find_element(By.TAG_NAME, "h1").text == TITLE
    assert browser.title == TITLE


def test_full_page_screenshot(browser, report, tmp_path):
    width, height = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    # the DevTools capture reaches below the viewport (a window that tall is cut to the screen)
    shot_b64 = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})["data"]
    shot = tmp_path / "report.png"
    shot.write_bytes(base64.b64decode(shot_b64))
    with Image.open(shot) as image:
        assert (image.width, image.height) == (width, height) and height > 1500
        # a blank page would be one colour
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or range(2)) > 50
    if os.environ.get("OMNIWAY_SCREENSHOT_DIR"):
        os.makedirs(os.environ["OMNIWAY_SCREENSHOT_DIR"], exist_ok=True)
        shutil.copy(shot, os.path.join(os.environ["OMNIWAY_SCREENSHOT_DIR"], "evaluation_report.png"))


def test_report_is_reproducible(tmp_path):
    # no timestamp: the same results write the same bytes (the stage's fingerprint stays put)
    first, second = tmp_path / "a" / "report.html", tmp_path / "b" / "report.html"
    for path in (first, second):
        render_report(results_fixture(), str(path), title=TITLE)
    assert first.read_bytes() == second.read_bytes()


def test_a_malformed_confusion_matrix_is_refused(tmp_path):
    result = results_fixture()[0]
    result["details"]["confusion"]["matrix"] = confusion_matrix(10)[:9]
    with pytest.raises(ValueError, match="10 x 10"):
        render_report([result], str(tmp_path / "report.html"), title="t")


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of a markdown table, as stripped cells."""
    lines = markdown.strip().splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_markdown_table_has_a_row_per_metric():
    results = results_fixture()
    markdown = markdown_table(results)
    header = markdown.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Suite", "Task", "Data", "n", "Metric", "↑/↓", "Value", "Baseline"]
    rows = table_rows(markdown)
    assert len(rows) == sum(len(r["metrics"]) for r in results) == 12
    assert rows[0] == ["digits-zero-shot", "zero_shot_classification", "shards/17a90de9b45cbb6e/val",
                       "100", "acc1", "↑", "0.8000", "0.1000"]
    # a suite's name is written once; a metric without a baseline leaves the cell blank
    assert rows[1][:4] == ["", "", "", ""]
    assert rows[4][4:] == ["i2t_r5", "↑", "1.0000", ""]
    assert rows[5][4:6] == ["t2i_r1", "↑"] and rows[6][4:] == ["mean_rank", "↓", "1.6667", "2.0000"]


def test_markdown_table_escapes_pipes():
    result = {"suite": "a|b", "task": "vqa", "data": {}, "metrics": {"acc": 1}, "baselines": {}}
    assert "a\\|b" in markdown_table([result])
    assert table_rows(markdown_table([result]))[0][6] == "1"


def test_compare_table_differences_and_missing_rows():
    a = [{"suite": "vqa", "metrics": {"accuracy": 0.5, "exact": 0.25}},
         {"suite": "asr", "metrics": {"wer": 0.4}, "lower_is_better": ["wer"]}]
    b = [{"suite": "vqa", "metrics": {"accuracy": 0.625, "yes_no": 0.9}},
         {"suite": "asr", "metrics": {"wer": 0.3}, "lower_is_better": ["wer"]},
         {"suite": "retrieval", "metrics": {"r1": 0.1}}]
    markdown = compare_table(a, b, "step-100", "step-200")
    assert "Δ (step-200 − step-100)" in markdown.splitlines()[0]
    rows = table_rows(markdown)
    assert [r[:2] for r in rows] == [["vqa", "accuracy"], ["vqa", "exact"], ["vqa", "yes_no"],
                                     ["asr", "wer"], ["retrieval", "r1"]]
    assert rows[0][3:] == ["0.5000", "0.6250", "+0.1250"]
    assert rows[1][3:] == ["0.2500", "", ""]          # only in a
    assert rows[2][3:] == ["", "0.9000", ""]          # only in b
    assert rows[3][2:] == ["↓", "0.4000", "0.3000", "-0.1000"]
    assert rows[4][3:] == ["", "0.1000", ""]


def test_summary_gives_each_suite_its_model_when_they_differ(tmp_path):
    first, second = results_fixture()[:2]
    second["model"] = {"stage": "instruct", "kind": "instruct", "key": "aa11bb22cc33dd44"}
    path = tmp_path / "report.html"
    render_report([first, second], str(path), title="two models")
    summary = path.read_text().split('<section class="suite"')[0]
    assert "<th>Model</th>" in summary and "aa11bb22cc33dd44" in summary and "1f93d5811ec23207" in summary
