"""`lsbench report`: read run directories, write the HTML page, Markdown or CSV tables."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from lsbench.errors import LsbenchError
from lsbench.report.html import render_html
from lsbench.report.load import Run, load_runs
from lsbench.report.markdown import render_markdown
from lsbench.report.views import Section, sections, slug

FORMATS = ("html", "md", "csv")


@dataclass
class ReportResult:
    fmt: str
    files: list[Path]
    sections: list[Section]
    seconds: float
    text: str | None = None  # the Markdown, when asked to print it (`--out -`)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_plots(self) -> int:
        return sum(len(s.plots) for s in self.sections)

    @property
    def n_tables(self) -> int:
        return sum(len(s.tables) for s in self.sections)

    @property
    def all_failed(self) -> bool:
        return all(s.kind == "run" and s.counts and "ok" not in s.counts
                   for s in self.sections)


def build_report(paths: list[str | Path], fmt: str = "html",
                 out: str | Path | None = None) -> ReportResult:
    """Build the report of one or more runs; raise LsbenchError when there is nothing to show.

    out: the HTML or Markdown file ("-" prints the Markdown), or the CSV directory; by default
    report.html / report.md / tables/ inside the first run directory.
    """
    start = time.perf_counter()
    if fmt not in FORMATS:
        raise LsbenchError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if not paths:
        raise LsbenchError("give at least one RUN_DIR (for example reports/latest).")
    runs = load_runs(paths)
    empty = [r for r in runs if r.is_empty]
    if len(empty) == len(runs):
        names = ", ".join(r.given for r in empty)
        raise LsbenchError(
            f"nothing to report: {names} recorded no results yet (the run was interrupted "
            "before its first configuration finished, or is still starting); resume it with "
            "`lsbench run --resume --out DIR`, or pass a run that has results."
        )
    title = ", ".join(r.name for r in runs)
    secs = sections(runs, with_plots=fmt != "csv")
    warnings = [f"{r.given}: {w}" for r in runs for w in r.warnings]
    result = ReportResult(fmt, [], secs, 0.0, warnings=warnings)
    if fmt == "html":
        target = Path(out) if out else runs[0].path / "report.html"
        _write(target, render_html(secs, title))
        result.files.append(target)
    elif fmt == "md":
        if str(out) == "-":
            result.text = render_markdown(secs, title, None)
        else:
            target = Path(out) if out else runs[0].path / "report.md"
            _write(target, render_markdown(secs, title, target))
            result.files.append(target)
    else:
        result.files += _write_csv(runs, secs, Path(out) if out else None)
    result.files += [p.png_path for s in secs for p in s.plots]
    result.seconds = time.perf_counter() - start
    return result


def _write_csv(runs: list[Run], secs: list[Section], out: Path | None) -> list[Path]:
    files = []
    for run, sec in zip(runs, secs, strict=True):
        if out is None:
            folder = run.path / "tables"
        else:
            folder = out if len(runs) == 1 else out / slug(run.name)
        for name, df in sec.exports.items():
            if df.empty:
                continue
            target = folder / f"{name}.csv"
            _write(target, df.to_csv(index=False))
            files.append(target)
    if not files:
        raise LsbenchError("no tables to export: no configuration was measured in these runs.")
    return files


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise LsbenchError(f"cannot write {path} ({e.strerror}); choose another place with "
                           "--out.") from None
