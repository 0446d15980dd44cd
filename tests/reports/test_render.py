"""The report as a reader meets it: the HTML opened in headless Chromium (no console messages, a
screenshot saved), the PDF rendered to PNG pages with poppler and its text checked for the tables."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.reports.conftest import require_tool

CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")


def open_in_chromium(html: Path, screenshot: Path, height: int = 6000) -> list[str]:
    """Load ``html`` headless, save a full-width screenshot, return every console message (Chromium
    logs console output and uncaught errors as CONSOLE lines on stderr with --enable-logging)."""
    chromium = require_tool("chromium")
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            f"--window-size=1200,{height}",
            f"--screenshot={screenshot}",
            html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert screenshot.exists(), f"chromium wrote no screenshot (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    return [m.group(1) for line in proc.stderr.splitlines() if (m := CONSOLE.search(line))]


def test_console_detector_catches_errors(tmp_path):
    """Control: a page with a console error and an uncaught exception is caught by the detector."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>console.error('boom'); notDefined();</script></body></html>")
    messages = open_in_chromium(page, tmp_path / "bad.png", height=300)
    assert any("boom" in m for m in messages) and any("notDefined" in m for m in messages)


@pytest.mark.parametrize("suite", ["full", "partial", "empty"])
def test_html_opens_in_chromium_without_console_errors(rendered, suite):
    html = rendered[suite]["html"]
    text = html.read_text()
    # self-contained: no external resource of any kind (figures are data: URIs)
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", text)
    assert "<script" not in text
    shot = html.with_name("screenshot.png")
    assert open_in_chromium(html, shot) == []
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # something was drawn, not a blank page


def test_html_content(rendered):
    full = rendered["full"]["html"].read_text()
    assert full.count("data:image/png;base64,") == 6  # a learning-curve figure per (group, scenario)
    for heading in (
        "Verdicts on the papers",
        "Main results",
        "paper Table 3",
        "paper Table 4",
        "paper Table 5",
        "BiDist",
        "Metric definitions",
        "Method choices in force",
        "Provenance",
    ):
        assert heading in full
    assert "97.01%" in full and "82.16%" in full  # the paper's numbers beside ours
    assert "Partial suite" not in full and "None: every run of the suite finished" in full
    assert "Not run." in full and "bidist_quick" in full  # BiDist section rendered as not run, with the reason
    assert "idm_mask_prob" in full and "choice" in full and "abc1234" in full  # config and provenance
    partial = rendered["partial"]["html"].read_text()
    assert "Partial suite" in partial and "39 of 42 runs finished" in partial
    assert "simulated crash in the learner" in partial and "pending" in partial and "running" in partial
    empty = rendered["empty"]["html"].read_text()
    assert "No runs yet" in empty and set(re.findall(r'data-outcome="([^"]+)"', empty)) == {"not run"}
    # the full suite's 3 seeds at 40k env steps meet no bar: no claim is decided, each says why
    outcomes = re.findall(r'data-outcome="([^"]+)"', full)
    assert set(outcomes) == {"inconclusive", "not run"} and len(outcomes) == 12
    assert "It decides none of the claims" in full and "budget 40k of 2M env steps; 3 of 5 seeds" in full


def pdf_text(pdf: Path) -> str:
    pdftotext = require_tool("pdftotext")
    return subprocess.run(
        [pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_pdf_pages_render_and_hold_the_tables(rendered):
    pdftoppm = require_tool("pdftoppm")
    pdf = rendered["partial"]["pdf"]
    assert pdf.read_bytes()[:5] == b"%PDF-"
    prefix = pdf.with_name("page")
    subprocess.run([pdftoppm, "-r", "50", "-png", str(pdf), str(prefix)], check=True, timeout=120)
    pages = sorted(pdf.parent.glob("page-*.png"))
    assert len(pages) >= 4
    first = np.asarray(Image.open(pages[0]).convert("L"), dtype=float)
    assert first.std() > 10
    text = pdf_text(pdf)
    for needle in (
        "Verdicts on the papers",
        "Main results",
        "qmix",
        "ow_wqmix",
        "ddn_raw_state",
        "ddn_no_idm",
        "ddn_distill_B",
        "ddn_mu_0.9",
        "60.0%",
        "95.0%",
        "82.0%",
        "97.01%",
        "paper 82.16%",
        "inconclusive",
        "decided by",
        "not run",
        "Missing runs",
        "simulated crash",
        "Metric definitions",
        "Method choices in force",
        "Provenance",
    ):
        assert needle in text, f"{needle!r} missing from the PDF text"
    # the hand-computed main-table row of the SMAX stand-in, in column order
    row = re.search(r"3s_vs_5z.*?60\.0%.*?45\.0%.*?60\.0%.*?58\.0%.*?95\.0%", text, re.S)
    assert row is not None


def test_empty_suite_pdf_says_nothing_ran(rendered):
    text = pdf_text(rendered["empty"]["pdf"])
    assert "No runs yet" in text and "not run" in text


def test_bidist_section_says_not_run_until_a_bidist_run_finished(tmp_path, rendered):
    from reports.collect import collect
    from reports.paper import load_paper_numbers
    from reports.render import render_html
    from tests.reports.conftest import REPS
    from tests.reports.synthetic import FakeRun, write_suite

    full = rendered["full"]["html"].read_text()  # a DDN suite: no BiDist run at all
    section = full[full.index('id="bidist"') : full.index('id="missing"')]
    assert "Not run." in section and "bidist_quick" in section
    suite = write_suite(
        tmp_path,
        "bidist",
        [FakeRun("meltingpot", "clean_up", "mappo", 0, None, state="pending", paper="bidist", algorithm="mappo")],
    )
    html = render_html(collect(suite), load_paper_numbers(), suite / "report", REPS)
    section = html[html.index('id="bidist"') : html.index('id="missing"')]
    assert "No cross-play result yet." in section and "training pending" in section
    assert "mappo" in html[html.index('id="missing"') :]  # the pending run is listed as missing


def test_report_names_a_suite_inside_the_project_by_its_relative_path(tmp_path):
    from reports.render import PROJECT, shown_path

    assert shown_path(PROJECT / "records" / "reference" / "reference_ddn") == "records/reference/reference_ddn"
    assert shown_path(tmp_path / "store") == str((tmp_path / "store").resolve())
