"""`dvc plots diff` offline: the page template that inlines Vega, and what its charts show.

A throw-away repository holds dvc.yaml, .dvc/ and params/ as the working tree has them, set to
the tiny experiment, and two commits of hand-written tables in results/tiny/report/tables/
(no pipeline run). `dvc plots diff HEAD~1 HEAD` writes its page with .dvc/plots/offline.html;
headless Chromium, with every host name unresolvable, then
- takes a screenshot of that page, compared with the same page without the inlined libraries
  (what DVC's default page, which loads Vega from a CDN, shows with no network: no charts);
- dumps the page's DOM once rendered with Vega's SVG renderer, whose ARIA labels and axis
  labels say what each chart draws: revisions in the legend, no line for a run without
  adversarial training in the adversarial-accuracy chart, whole-number epoch ticks.
Debian's chromium is in the `test` group of scripts/system-packages.sh (`make test` installs it).
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from advsoup.config import REPO_ROOT

BIN = Path(sys.executable).parent
EXP = "tiny"
TABLES = f"results/{EXP}/report/tables"
FIGURES = f"results/{EXP}/report/figures"
TEMPLATE = REPO_ROOT / ".dvc" / "plots" / "offline.html"
COPIED = ["dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", "params"]
# What Debian's chromium needs to run headless as root here; the background-networking flags
# stop its own connections (refused one by one on a closed network), and the resolver rule
# makes every host unresolvable, so a page that needs a CDN fails here as on a train.
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000"]
CHARTS = ["Soup curve", "Training loss", "Training accuracy on clean images",
          "Training accuracy on adversarial images"]

SOUPS = {  # run,w,clean_acc,robust_acc: the nominal run has its w=0 point only
    "HEAD~1": "nominal-s0,0.0,0.80,0.05\ntoken-s0,0.0,0.78,0.20\ntoken-s0,0.5,0.74,0.35\ntoken-s0,1.0,0.70,0.45\n",
    "HEAD": "nominal-s0,0.0,0.80,0.05\ntoken-s0,0.0,0.78,0.20\ntoken-s0,0.5,0.76,0.38\ntoken-s0,1.0,0.72,0.50\n",
}
TRAINING = {  # run,epoch,train_loss,train_clean_acc,train_adv_acc: nominal training has no adversarial accuracy
    "HEAD~1": ("nominal-s0,1,1.90,0.40,\nnominal-s0,2,1.20,0.60,\nnominal-s0,3,0.90,0.70,\n"
               "token-s0,1,2.10,0.35,0.20\ntoken-s0,2,1.50,0.50,0.30\ntoken-s0,3,1.20,0.60,0.38\n"),
    "HEAD": ("nominal-s0,1,1.90,0.40,\nnominal-s0,2,1.10,0.65,\nnominal-s0,3,0.90,0.70,\n"
             "token-s0,1,2.10,0.35,0.20\ntoken-s0,2,1.50,0.50,0.30\ntoken-s0,3,1.20,0.60,0.42\n"),
}


def sh(cmd: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def write_tables(repo: Path, rev: str) -> None:
    tables = repo / TABLES
    tables.mkdir(parents=True, exist_ok=True)
    (tables / "soups.csv").write_text("run,w,clean_acc,robust_acc\n" + SOUPS[rev])
    (tables / "training.csv").write_text("run,epoch,train_loss,train_clean_acc,train_adv_acc\n" + TRAINING[rev])
    figures = repo / FIGURES  # dvc.yaml's image plots: small grey squares
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("soup_curve", "shift"):
        Image.new("RGB", (60, 40), (170, 170, 170)).save(figures / f"{name}.png")


def chromium(args: list[str], page: Path, tmp: Path, env: dict) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: `make test-setup` installs Debian's chromium (scripts/system-packages.sh test)"
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    return sh([exe, *CHROMIUM, f"--user-data-dir={profile}", *args, page.as_uri()], tmp, env, timeout=180)


def plots_repo(root: Path, exp: str) -> tuple[Path, dict]:
    """A git repository holding dvc.yaml, .dvc/ and params/ as the working tree has them, set to ``exp``."""
    env = {k: v for k, v in os.environ.items() if k != "ADVSOUP_OVERRIDES"}
    env.update(PATH=f"{BIN}:{env['PATH']}", HOME=str(root), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    repo = root / "advsoup"
    for name in COPIED:
        src, dst = REPO_ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    pipeline = repo / "params" / "pipeline.yaml"
    pipeline.write_text(re.sub(r"(?m)^exp: \w+$", f"exp: {exp}", pipeline.read_text()))
    sh(["git", "init", "-q"], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> SimpleNamespace:
    """`dvc plots diff HEAD~1 HEAD` of two commits of hand-written tables, with the offline template."""
    root = tmp_path_factory.mktemp("plots")
    repo, env = plots_repo(root, EXP)
    for rev in ("HEAD~1", "HEAD"):
        write_tables(repo, rev)
        sh(["git", "add", "-A"], repo, env)
        sh(["git", "commit", "-qm", rev], repo, env)

    # The repository's .dvc/config names the template (plots.html_template); until it does,
    # the command line has to.
    configured = sh(["dvc", "config", "plots.html_template"], repo, env).stdout.strip() \
        if "html_template" in (repo / ".dvc" / "config").read_text() else ""
    flag = [] if configured else ["--html-template", str(repo / ".dvc" / "plots" / "offline.html")]
    out = root / "plots"
    sh(["dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", str(out), *flag], repo, env)
    return SimpleNamespace(root=root, env=env, html=out / "index.html", configured=configured)


def test_every_figure_an_experiment_draws_is_a_plot(tmp_path):
    # an experiment that asks one question (report.targets: [regime]) draws its own figure and no soup curve
    repo, env = plots_repo(tmp_path, "regime")
    figures = repo / "results" / "regime" / "report" / "figures"
    figures.mkdir(parents=True)
    for name in ("regime", "adapters"):
        Image.new("RGB", (60, 40), (170, 170, 170)).save(figures / f"{name}.png")
    shown = sh(["dvc", "plots", "show", "--json"], repo, env).stdout
    data = json.loads(shown[shown.index("{"):])
    drawn = {Path(name).name for name, entries in data["data"].items() if entries}
    assert drawn == {"regime.png", "adapters.png"}, data["data"].keys()
    # what fails to load is only the soup and training tables this experiment has no data for
    assert {Path(e["source"]).name for e in data.get("errors", [])} == {"soups.csv", "training.csv"}


def test_the_template_inlines_vega_and_leaves_out_dvcs_cdn_scripts():
    text = TEMPLATE.read_text(encoding="utf8")
    assert "{plot_divs}" in text and "{scripts}" not in text  # DVC adds its CDN <script> tags at {scripts}
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert "window.vegaEmbed=" in text.replace(" ", "")
    for lib in ("vega 6.", "vega-lite 5.", "vega-embed 7."):
        assert lib in text, f"{lib}: scripts/plots_template.py writes the versions into the page"


def test_the_page_names_no_cdn(page):
    text = page.html.read_text(encoding="utf8")
    assert not re.search(r"<script[^>]*\bsrc=", text), "the page loads a script from elsewhere"
    assert "cdn.jsdelivr" not in text and text.count("vegaEmbed('#") == len(CHARTS)


def dark_pixels(png: Path) -> int:
    return sum(Image.open(png).convert("L").histogram()[:200])


def test_headless_chromium_draws_the_charts_offline(page, tmp_path):
    shot = tmp_path / "page.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,2400"], page.html, tmp_path, page.env)
    # The same page without the inlined libraries: what DVC's default page shows with no CDN.
    text = page.html.read_text(encoding="utf8")
    start = text.index("<script>")
    blank_html = page.html.with_name("blank.html")
    blank_html.write_text(text[:start] + text[text.index("</script>", start) + len("</script>"):], encoding="utf8")
    blank = tmp_path / "blank.png"
    chromium([f"--screenshot={blank}", "--window-size=1400,2400"], blank_html, tmp_path, page.env)
    drawn, empty = dark_pixels(shot), dark_pixels(blank)
    # four charts with axes, grids, lines, legends and titles: tens of thousands of dark pixels
    assert drawn - empty > 20_000, f"{shot}: {drawn} dark pixels, {empty} without Vega: the charts are blank"


def svg_charts(page, tmp: Path) -> dict[str, str]:
    """The page's DOM once Vega has rendered each chart as SVG, cut into one piece per chart title."""
    text = page.html.read_text(encoding="utf8")
    end = text.index("</script>") + len("</script>")
    svg = page.html.with_name("svg.html")
    svg.write_text(text[:end] + "<script>const embed = window.vegaEmbed; window.vegaEmbed = (el, spec, opt) => "
                   "embed(el, spec, Object.assign({}, opt, {renderer: 'svg'}));</script>" + text[end:],
                   encoding="utf8")
    dom = chromium(["--dump-dom"], svg, tmp, page.env).stdout
    dom = dom[dom.index("<body"):]
    pieces = dom.split("aria-roledescription=\"visualization\"")[1:]
    charts = {}
    for piece in pieces:
        title = html.unescape(re.search(r"aria-label=\"Title text '([^']*)'\"", piece).group(1))
        charts[next(c for c in CHARTS if title.startswith(c))] = html.unescape(piece)
    assert sorted(charts) == sorted(CHARTS), f"charts drawn: {sorted(charts)}"
    return charts


@pytest.fixture(scope="module")
def charts(page, tmp_path_factory) -> dict[str, str]:
    return svg_charts(page, tmp_path_factory.mktemp("svg"))


def series(chart: str) -> set[tuple[str, str]]:
    """(run, revision) of each line drawn: a line mark whose path has points (Vega labels it by its first one)."""
    drawn = set()
    for tag in re.findall(r"<path\b[^>]*>", chart):
        attrs = dict(re.findall(r"([\w-]+)=\"([^\"]*)\"", tag))
        if attrs.get("aria-roledescription") == "line mark" and re.search(r"\d", attrs.get("d", "")):
            run, rev = re.search(r"run: ([^;]+); rev: ([^;]+)", attrs["aria-label"]).groups()
            drawn.add((run, rev))
    return drawn


def test_every_chart_tells_the_revisions_apart_in_its_legend(charts):
    for title, chart in charts.items():
        assert "Symbol legend titled 'revision' for shape with 2 values: HEAD, HEAD~1" in chart, title
        labels = re.findall(r"role-legend-label[^>]*>\s*<text[^>]*>([^<]*)</text>", chart)
        assert {"HEAD (solid)", "HEAD~1 (dashed)"} <= set(labels), f"{title}: legend labels {labels}"


def test_runs_without_adversarial_training_have_no_adversarial_accuracy_line(charts):
    both = {(run, rev) for run in ("nominal-s0", "token-s0") for rev in ("HEAD", "HEAD~1")}
    assert series(charts["Training accuracy on clean images"]) == both
    assert series(charts["Training loss"]) == both
    adv = charts["Training accuracy on adversarial images"]
    assert series(adv) == {("token-s0", "HEAD"), ("token-s0", "HEAD~1")}
    # the nominal run keeps its colour (and legend entry) of the other charts, with nothing drawn
    assert "Symbol legend titled 'run' for fill color and stroke color with 2 values: nominal-s0, token-s0" in adv
    assert "values from 0.20 to 0.42" in adv  # the y axis spans the co-trained run's values, not 0


def test_epoch_ticks_are_whole_numbers(charts):
    for title in CHARTS[1:]:
        axis = re.search(r"aria-label=\"X-axis titled 'epoch'.*?role-axis-label.*?</g>", charts[title], re.S)
        assert axis, title
        ticks = re.findall(r"<text[^>]*>([^<]*)</text>", axis.group(0))
        assert ticks == ["1", "2", "3"], f"{title}: epoch ticks {ticks}"


@pytest.mark.slow
def test_the_template_is_what_the_generator_writes(tmp_path):
    """scripts/plots_template.py, run again, writes the committed page (same vl-convert-python)."""
    vlc = pytest.importorskip("vl_convert", reason="scripts/plots_template.py needs vl-convert-python")
    if f"(vl-convert-python {vlc.__version__})" not in TEMPLATE.read_text(encoding="utf8"):
        pytest.skip(f"the committed page comes from another vl-convert-python than {vlc.__version__}")
    out = tmp_path / "offline.html"
    sh([sys.executable, str(REPO_ROOT / "scripts" / "plots_template.py"), "--out", str(out)], tmp_path,
       dict(os.environ))
    assert out.read_text(encoding="utf8") == TEMPLATE.read_text(encoding="utf8")
