"""report.html (scaling.analysis.html): the converter on the Markdown that report.md uses, and the
page of a synthetic study opened in a real headless Chromium: no console error, every figure an
<img> with a data URI that decodes, the tables there and sortable, and a non-trivial screenshot.

Chromium is Debian's package, installed by the session fixture when missing (as the Slurm tests
install Slurm). Skipped, with the reason, only where it cannot be installed (not root, no apt, apt
failed); with CI=true they fail instead."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from scaling.analysis.errors import DataError
from scaling.analysis.html import markdown_to_html, render_report_html, write_report_html

CI = os.environ.get("CI", "").lower() == "true"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
# The headless shell alone is enough to render and screenshot a page, and is the smaller install.
APT_PACKAGES = ["chromium-headless-shell"]
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2a1fc"
    "d20000000049454e44ae426082"
)  # fmt: skip


# ---- the converter, without a browser ----------------------------------------------------------

REPORT = """# Scaling study `tiny`

Two runs; the law is L = E + A/N^alpha, **not** trusted *yet*. See [the paper](https://arxiv.org/abs/2203.15556).

## Results

| run | N | eval loss |
|---|---|---|
| `b<1>` | 1e+06 | 3.5 |
| `a\\|b` | 2e+05 | **no** |

Skipped runs:

- `crashed` (failed): CUDA <out> of memory
- second item
  continued

1. first
2. second

```
x = 1 < 2  # **not bold**
```

## Figures

![isoflop](figures/isoflop.png)
![gone](figures/gone.png)
![outside](../outside.png)
"""


def _study_with_figure(tmp_path: Path) -> Path:
    study = tmp_path / "study"
    (study / "figures").mkdir(parents=True)
    (study / "figures" / "isoflop.png").write_bytes(PNG_1PX)
    (tmp_path / "outside.png").write_bytes(PNG_1PX)
    return study


def test_converter_renders_the_subset_report_md_uses(tmp_path):
    body = markdown_to_html(REPORT, _study_with_figure(tmp_path))
    assert "<h1>Scaling study <code>tiny</code></h1>" in body and "<h2>Results</h2>" in body
    assert "<strong>not</strong> trusted <em>yet</em>" in body
    assert '<a href="https://arxiv.org/abs/2203.15556">the paper</a>' in body
    assert "<thead><tr><th>run</th><th>N</th><th>eval loss</th></tr></thead>" in body
    assert "<td><code>b&lt;1&gt;</code></td><td>1e+06</td><td>3.5</td>" in body  # escaped, in code
    assert "<td><code>a|b</code></td><td>2e+05</td><td><strong>no</strong></td>" in body  # an escaped pipe
    assert "<li><code>crashed</code> (failed): CUDA &lt;out&gt; of memory</li>" in body
    assert "<li>second item continued</li>" in body
    assert "<ol><li>first</li><li>second</li></ol>" in body
    assert "<pre><code>x = 1 &lt; 2  # **not bold**</code></pre>" in body
    assert body.count("<figure>") == 3
    assert '<img alt="isoflop" src="data:image/png;base64,iVBORw0KGgo' in body
    assert '<span class="missing">[figure gone: figures/gone.png is not in the study folder]</span>' in body
    assert '[figure outside: ../outside.png is not in the study folder]' in body  # even where the file exists


def test_the_page_is_self_contained(tmp_path):
    page = render_report_html(REPORT, _study_with_figure(tmp_path))
    assert page.startswith("<!DOCTYPE html>") and "<title>Scaling study tiny</title>" in page
    assert "default-src 'none'; img-src data:" in page  # the browser itself refuses anything fetched
    # Nothing is loaded from elsewhere: every src is a data URI, and the only href is the link.
    assert re.findall(r'src="(?!data:)', page) == []
    assert re.findall(r'<(?:link|iframe|object|embed)\b', page) == []
    assert re.findall(r'href="([^"]*)"', page) == ["https://arxiv.org/abs/2203.15556"]


def test_write_report_html_is_atomic_and_needs_the_report(tmp_path):
    with pytest.raises(DataError, match="report.md does not exist"):
        write_report_html(tmp_path / "empty")
    study = _study_with_figure(tmp_path)
    (study / "report.md").write_text(REPORT)
    path = write_report_html(study)
    assert path == study / "report.html" and "<h2>Figures</h2>" in path.read_text()
    assert sorted(p.name for p in study.iterdir()) == ["figures", "report.html", "report.md"]  # no temp file left


# ---- in a browser -------------------------------------------------------------------------------


def _unavailable(reason: str):
    if CI:
        pytest.fail(f"CI=true, but headless Chromium is not available: {reason}")
    pytest.skip(reason)


def _find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path and subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0:
            return path
    return None


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> str:
    """A headless Chromium binary; Debian's package is installed when none is found."""
    found = _find_browser()
    if found:
        return found
    if os.geteuid() != 0:
        _unavailable("no Chromium, and not root to install it with apt")
    if shutil.which("apt-get") is None:
        _unavailable("no Chromium, and no apt-get to install it")
    log = tmp_path_factory.mktemp("chromium") / "apt.log"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    # Wait for the package lock rather than fail when another apt is running.
    install = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends", *APT_PACKAGES]
    t0 = time.time()
    with log.open("w") as fh:
        ok = subprocess.run(install, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=900).returncode == 0
        if not ok:  # a stale package index: refresh it once and retry
            subprocess.run(["apt-get", "update", "-q"], stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=600)
            ok = subprocess.run(install, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=900).returncode == 0
    found = _find_browser()
    if not ok or not found:
        _unavailable(f"could not install {APT_PACKAGES} with apt: {log.read_text()[-500:]}")
    print(f"installed {APT_PACKAGES} in {time.time() - t0:.1f}s")
    return found


def _browse(chromium: str, page: Path, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Open `page` from disk in headless Chromium. Console messages and uncaught errors go to
    stderr (--enable-logging=stderr), so a page's errors can be read from there."""
    profile = page.parent / f".profile-{page.stem}"
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", *extra, page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _console_errors(stderr: str) -> list[str]:
    # Chromium logs a page's console as `INFO:CONSOLE(line)] "message", source: URL (line)`, and
    # uncaught exceptions and refused loads (CSP) as console errors.
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line or "Refused to" in line]


# JavaScript added to a copy of the page (the report itself stays as written): it records errors,
# then once the page has loaded checks that each image decoded, clicks the header COLUMN of the
# table under the heading SECTION twice and reads the column after each click, and writes what it
# saw into the DOM, where --dump-dom shows it.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { __errors.push("error: " + e.message); });
document.addEventListener("securitypolicyviolation", function (e) { __errors.push("csp: " + e.blockedURI); });
window.addEventListener("load", function () {
  var out = {images: [], tables: document.querySelectorAll("table.sortable").length, sorted: []};
  Array.prototype.forEach.call(document.images, function (img) {
    out.images.push({alt: img.alt, width: img.naturalWidth, complete: img.complete});
  });
  var heading = Array.prototype.filter.call(document.querySelectorAll("h2"), function (h) {
    return h.textContent === "SECTION"; })[0];
  var table = heading.nextElementSibling;
  while (table && table.tagName !== "TABLE") table = table.nextElementSibling;
  var th = Array.prototype.filter.call(table.tHead.rows[0].cells, function (c) {
    return c.textContent === "COLUMN"; })[0];
  var col = th.cellIndex;
  for (var k = 0; k < 2; k++) {
    th.click();
    out.sorted.push({dir: th.getAttribute("aria-sort"), values: Array.prototype.map.call(
      table.tBodies[0].rows, function (r) { return r.cells[col].textContent; })});
  }
  out.errors = __errors;
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


class _Probe(HTMLParser):
    def __init__(self):
        super().__init__()
        self.inside, self.text = False, ""

    def handle_starttag(self, tag, attrs):
        self.inside = self.inside or (tag == "pre" and ("id", "probe") in attrs)

    def handle_endtag(self, tag):
        if tag == "pre":
            self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


def _probe(chromium: str, page: Path, html_text: str, section: str, column: str) -> dict:
    """Open a copy of the page with PROBE added; what the probe saw."""
    probe = PROBE.replace("SECTION", section).replace("COLUMN", column)
    page.write_text(html_text.replace("<head>", "<head>\n" + probe, 1))
    out = _browse(chromium, page, "--dump-dom")
    assert out.returncode == 0, out.stderr[-2000:]
    parser = _Probe()
    parser.feed(out.stdout)
    assert parser.text, f"the probe did not run:\n{out.stdout[-1000:]}\n{out.stderr[-2000:]}"
    seen = json.loads(parser.text)
    assert seen["errors"] == [] and _console_errors(out.stderr) == [], (seen["errors"], out.stderr[-2000:])
    return seen


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def study_report(tmp_path_factory) -> Path:
    """A synthetic study analysed as scaling-study analyses one: figures/, report.md, report.html."""
    from test_analysis_io_cli import write_study

    from scaling.analysis.study import analyse_study, write_study_outputs

    study = write_study(tmp_path_factory.mktemp("study"), n_sizes=5)
    write_study_outputs(study, analyse_study(study, n_boot=0))
    write_report_html(study)
    return study


def test_report_opens_in_a_browser_without_errors(chromium, study_report):
    page = study_report / "report.html"
    shot = study_report / "screenshot.png"
    out = _browse(chromium, page, f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _console_errors(out.stderr) == [], out.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000, "the screenshot is missing or nearly blank"
    assert _png_size(shot) == (1280, 4000)


def test_every_figure_is_embedded_and_tables_sort(chromium, study_report):
    text = (study_report / "report.html").read_text()
    figures = re.findall(r"!\[([^\]]*)\]\(figures/([^)]+)\)", (study_report / "report.md").read_text())
    assert len(figures) >= 4
    seen = _probe(chromium, study_report / "probe.html", text, "Results", "eval loss")
    # Every figure report.md links is an <img> whose data URI decoded to a real picture.
    assert [i["alt"] for i in seen["images"]] == [alt for alt, _ in figures]
    assert all(i["complete"] and i["width"] > 100 for i in seen["images"]), seen["images"]
    for alt, name in figures:
        assert re.search(rf'<img alt="{re.escape(alt)}" src="data:image/png;base64,', text), name
    # Every pipe table is a sortable table; clicking a header sorts by it, again reverses.
    assert seen["tables"] == len(re.findall(r"^\|---", (study_report / "report.md").read_text(), re.M)) >= 3
    (d1, v1), (d2, v2) = [(s["dir"], [float(v) for v in s["values"]]) for s in seen["sorted"]]
    assert d1 == "ascending" and v1 == sorted(v1) and d2 == "descending" and v2 == sorted(v1, reverse=True)


def test_mixed_columns_sort_as_numbers_with_blanks_last(chromium, tmp_path):
    md = ("## T\n\n| run | x |\n|---|---|\n| a | n/a |\n| b | 1e+15 |\n| c | -0.29% |\n| d | 2 |\n"
          "| e |  |\n| f | +0.04% |\n| g | 10 |\n")  # fmt: skip
    seen = _probe(chromium, tmp_path / "mixed.html", render_report_html(md, tmp_path), "T", "x")
    ascending, descending = (s["values"] for s in seen["sorted"])
    assert ascending == ["-0.29%", "+0.04%", "2", "10", "1e+15", "n/a", ""]
    assert descending == ["1e+15", "10", "2", "+0.04%", "-0.29%", "n/a", ""]


def test_the_error_check_can_fail(chromium, tmp_path):
    # The same reading of the browser's log sees an uncaught error and a refused external image.
    page = tmp_path / "bad.html"
    page.write_text(render_report_html("# bad\n\n![x](figures/x.png)\n", tmp_path).replace(
        "</body>", '<img src="https://example.invalid/x.png"><script>undefined_function();</script></body>'))  # fmt: skip
    errors = _console_errors(_browse(chromium, page).stderr)
    assert any("undefined_function" in e for e in errors), errors
    assert any("example.invalid" in e for e in errors), errors
