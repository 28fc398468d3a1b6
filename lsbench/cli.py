"""The lsbench command line: thin typer wrappers over library functions.

This is the only module that prints or exits. Library code raises `LsbenchError`, which is shown
as one red line (no traceback) with exit code 1.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from functools import wraps
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import lsbench
from lsbench.errors import LsbenchError

app = typer.Typer(
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    help="Benchmark attention mechanisms for long sequences: speed, memory, extrapolation.",
)
console = Console()
err_console = Console(stderr=True)


def friendly(fn):
    """Turn LsbenchError into a clean message and exit code 1."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LsbenchError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"lsbench {lsbench.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """lsbench: latency, memory and length extrapolation of attention variants."""


class ListWhat(str, Enum):
    variants = "variants"
    positions = "positions"
    suites = "suites"
    corpora = "corpora"


def _print_rows(rows: list[dict], title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    cells = [[_cell(v) for v in row.values()] for row in rows]
    cols = [c.replace("_", " ") for c in (rows[0] if rows else [])]
    widest = sum(max([len(c)] + [len(r[i]) for r in cells]) + 3 for i, c in enumerate(cols))
    if widest <= console.width:
        table = Table(title=title)
        for col in cols:
            table.add_column(col)
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    # Too wide for this terminal: one key/value card per entry rather than a crushed table.
    console.print(f"[bold]{title}[/]")
    for row in cells:
        card = Table(show_header=False, box=None, padding=(0, 1))
        card.add_column(style="bold", no_wrap=True)
        card.add_column(overflow="fold")
        for col, value in zip(cols[1:], row[1:], strict=True):
            card.add_row(col, value)
        console.print(f"\n[bold cyan]{row[0]}[/]")
        console.print(card)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _list_rows(what: ListWhat) -> list[dict]:
    if what is ListWhat.variants:
        from lsbench.variants import REGISTRY

        return [
            {
                "name": name,
                "method": cls.method,
                "paper": cls.paper,
                "time": cls.time_complexity,
                "memory": cls.memory_complexity,
                "causal": cls.supports_causal,
                "parameters": dict(cls.defaults),
            }
            for name, cls in sorted(REGISTRY.items())
        ]
    if what is ListWhat.positions:
        from lsbench.positions import list_rows

        return list_rows()
    if what is ListWhat.suites:
        from lsbench.sweep.suite import list_rows

        return list_rows()
    from lsbench.extrapolate.corpus import list_rows

    return list_rows()


@app.command("list")
@friendly
def list_(
    what: Annotated[ListWhat, typer.Argument(help="What to list.")] = ListWhat.variants,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """List attention variants, position methods, suites or corpora."""
    _print_rows(_list_rows(what), f"lsbench {what.value}", as_json)


@app.command()
@friendly
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """Show the environment fingerprint, as a run would record it."""
    from lsbench.measure.env import fingerprint

    fp = fingerprint()
    if as_json:
        print(json.dumps(fp, indent=2))
        return
    table = Table(title="lsbench environment", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in fp.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


# --- lsbench run (sweep) -------------------------------------------------------------------

_RUN_HELP = """Measure latency and peak memory of attention variants over a sweep of lengths.

With no arguments: the [bold]quick[/] suite on a CPU, [bold]fastformer-fig2[/] on CUDA. Results
go to reports/<timestamp>-<suite>/ (run.json, results.jsonl, results.csv; reports/latest points to
the newest); every config is on disk the moment it finishes. Ctrl-C stops after the current config;
continue with [bold]lsbench run --resume DIR[/] (or [bold]--out DIR --resume[/]; plain --resume
continues reports/latest).

Each config runs in a worker process: an OOM, crash or hang becomes a row (oom, error, timeout),
and configs predicted not to fit --mem-budget are recorded as skipped.

Extra variants (e.g. test-only ones): set LSBENCH_PLUGINS to comma-separated module names or .py
file paths; they are imported in this process and in the workers, and register like built-ins.
"""


@app.command("run", help=_RUN_HELP)
@friendly
def run_cmd(
    run_dir: Annotated[str | None, typer.Argument(
        help="With --resume: the run directory to continue.", show_default=False)] = None,
    suite: Annotated[str | None, typer.Option(
        "--suite", "-s", help="Built-in suite name (`lsbench list suites`) or a .toml path.",
        show_default=False)] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Run directory (default reports/<timestamp>-<suite>).",
        show_default=False)] = None,
    variants_: Annotated[str | None, typer.Option(
        "--variants", help="Comma-separated variants, e.g. transformer,fastformer.",
        show_default=False)] = None,
    seq_lens: Annotated[str | None, typer.Option(
        "--seq-lens", help="Comma-separated lengths, e.g. 128,256,512.",
        show_default=False)] = None,
    batch_sizes: Annotated[str | None, typer.Option(
        "--batch-sizes", help="Comma-separated batch sizes (replaces the suite's rule).",
        show_default=False)] = None,
    mode: Annotated[str | None, typer.Option(
        "--mode", help="inference, training, or inference,training.", show_default=False)] = None,
    dtype: Annotated[str | None, typer.Option(
        "--dtype", help="float32, bfloat16 or float16 (CUDA only).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu or cuda.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue a run: skip configs already recorded.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="With --resume: continue on a different machine/environment.")] = False,
    mem_budget: Annotated[str | None, typer.Option(
        "--mem-budget", help="Skip configs predicted above this, e.g. 512MiB or 8GiB "
        "(default: 50% of available RAM, 85% of free GPU memory).", show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="Seconds per config before its worker is killed (default: suite's).",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="torch threads, fixed for the run (default: torch's).",
        show_default=False)] = None,
    report_: Annotated[bool, typer.Option(
        "--report", help="Write the HTML report (RUN_DIR/report.html) when the run ends.")]
    = False,
    open_: Annotated[bool, typer.Option(
        "--open", help="With --report: open the page in a browser, where there is one.")]
    = False,
) -> None:
    from pathlib import Path

    from lsbench.sweep import suite as S
    from lsbench.sweep.runner import RunRequest, plan_run

    if run_dir is not None and not resume:
        raise LsbenchError(f"a directory argument ({run_dir}) is only for --resume; to write a "
                           f"new run there use --out {run_dir}.")
    if run_dir is not None and out is not None and Path(run_dir) != Path(out):
        raise LsbenchError(f"--resume {run_dir} and --out {out} disagree; give one directory.")
    resume_dir = None
    if resume:
        resume_dir = Path(run_dir or out or Path("reports") / "latest")
    given = {k: v for k, v in {
        "suite": suite, "out": out, "variants": variants_, "seq_lens": seq_lens,
        "batch_sizes": batch_sizes, "mode": mode, "dtype": dtype, "device": device,
        "resume": str(resume_dir) if resume_dir else None, "force": force or None,
        "mem_budget": mem_budget, "timeout": timeout, "threads": threads}.items()
        if v is not None}
    command = "lsbench run" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in given.items())
    req = RunRequest(
        suite=suite, out=Path(out) if out and not resume else None, resume=resume_dir,
        force=force, variants=S.parse_list("--variants", variants_),
        seq_lens=S.parse_int_list("--seq-lens", seq_lens),
        batch_sizes=S.parse_int_list("--batch-sizes", batch_sizes),
        modes=S.parse_list("--mode", mode), dtype=dtype, device=device,
        mem_budget_bytes=S.parse_size(mem_budget) if mem_budget is not None else None,
        timeout_s=timeout, threads=threads, command=command, args=given)
    if open_ and not report_:
        raise LsbenchError("--open opens the report, so it needs --report too.")
    run_dir = _run_sweep(plan_run(req))
    if report_:
        _write_run_report(run_dir, open_)


def _write_run_report(run_dir, open_: bool) -> None:
    """`lsbench run --report`: the HTML page of the run just finished, and its path."""
    import webbrowser

    from lsbench.report import build_report

    result = build_report([str(run_dir)], "html", None)
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    page = next(f for f in result.files if f.suffix == ".html")
    console.print(f"report: [bold]{page}[/]", highlight=False)
    if open_ and not webbrowser.open(page.resolve().as_uri()):
        err_console.print("[yellow]no browser found[/]; open the page above yourself.")


def _run_sweep(plan):
    import signal

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from lsbench.sweep.grid import describe
    from lsbench.sweep.runner import execute, summary_tables

    for w in plan.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console, transient=False)

    class Events:
        task = None

        def status(self, message):
            console.print(f"[dim]{message}[/]", highlight=False)

        def start(self, plan, todo):
            s = plan.suite
            done = len(plan.configs) - todo
            console.print(
                f"[bold]{s.name}[/]: {len(plan.configs)} configs on {plan.device} "
                f"({s.dtype}, {plan.threads} threads, d_model={s.d_model}, heads={s.n_heads}, "
                f"layers={s.n_layers})" + (f", {done} already recorded" if done else ""),
                highlight=False)
            console.print(f"writing {plan.run_dir}", highlight=False)
            progress.start()
            self.task = progress.add_task("starting", total=todo)

        def config(self, config, index, total):
            progress.update(self.task, description=describe(config))

        def row(self, row):
            progress.advance(self.task)
            if row["status"] != "ok":
                progress.console.print(
                    f"  {row['variant']} {row['mode']} B={row['batch_size']} N={row['seq_len']}: "
                    f"[yellow]{row['status']}[/] {row['reason']}", highlight=False)

    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        err_console.print("[yellow]stopping after the current config (Ctrl-C again to abort "
                          "it now)[/]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    resume_hint = f"lsbench run --resume {plan.run_dir}"
    try:
        outcome = execute(plan, Events(), should_stop=lambda: stop["requested"])
    except KeyboardInterrupt:
        progress.stop()
        err_console.print(f"[yellow]aborted.[/] Finished configs are saved; continue with: "
                          f"[bold]{resume_hint}[/]", highlight=False)
        raise typer.Exit(130) from None
    finally:
        progress.stop()
        signal.signal(signal.SIGINT, previous)

    for t in summary_tables(outcome.rows):
        table = Table(title=t["title"], min_width=len(t["title"]) + 4)  # title on one line
        for col in t["columns"]:
            table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
        for r in t["rows"]:
            table.add_row(*r)
        console.print(table)
    counts: dict[str, int] = {}
    for r in outcome.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    noisy = sum(1 for r in outcome.rows if r.get("noisy"))
    console.print("rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                  + (f"; {noisy} noisy (~, IQR/median > 10%)" if noisy else ""), highlight=False)
    for name in ("run.json", "results.jsonl", "results.csv"):
        console.print(f"wrote {outcome.run_dir / name}", highlight=False)
    latest = outcome.run_dir.parent / "latest"
    if latest.is_symlink() and latest.resolve() == outcome.run_dir.resolve():
        console.print(f"{latest} -> {outcome.run_dir.name}", highlight=False)
    if not outcome.complete:
        left = len(plan.configs) - len({r["config_id"] for r in outcome.rows})
        err_console.print(f"[yellow]stopped[/] with {left} configs left; continue with: "
                          f"[bold]{resume_hint}[/]", highlight=False)
        raise typer.Exit(130)
    return outcome.run_dir

# --- lsbench extrapolate -------------------------------------------------------------------

_EXTRAPOLATE_HELP = """Train short, test long: perplexity of position methods past the train length.

Trains a small causal LM per position method at --train-len on the same data, seed and token
budget, then scores one held-out stream at L×{1, 1.5, 2, 4, 8, 16} (nonoverlapping windows, and
sliding windows with --stride). Writes run.json, extrapolation.csv, training.csv and checkpoints
to reports/<timestamp>-extrapolate/. Interrupted? Rerun the same command with [bold]--out DIR[/]
to resume; [bold]--eval-only --out DIR[/] rescores trained checkpoints.
"""


@app.command("extrapolate", help=_EXTRAPOLATE_HELP)
@friendly
def extrapolate_cmd(
    ctx: typer.Context,
    train_len: Annotated[int, typer.Option(
        "--train-len", "-L", help="Training length L (tokens = bytes).")] = 512,
    positions_: Annotated[str | None, typer.Option(
        "--positions", help="Comma-separated position methods (`lsbench list positions`) "
        "\\[default: sinusoidal,rotary,t5,alibi + the control none].", show_default=False)
    ] = None,
    corpus: Annotated[str, typer.Option(
        "--corpus", help="Built-in corpus (`lsbench list corpora`) or a text file/directory.")
    ] = "stdlib",
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Run directory (default reports/<timestamp>-extrapolate); an "
        "existing one resumes from its checkpoints.", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="tiny (seconds), cpu (< 20 min on 2 cores) or gpu \\[default: gpu on "
        "CUDA, else cpu].", show_default=False)] = None,
    eval_lens: Annotated[str | None, typer.Option(
        "--eval-lens", help="Comma-separated eval lengths: tokens (512,1024) or multiples of L "
        "(1x,2x,16x) \\[default: 1x,1.5x,2x,4x,8x,16x].", show_default=False)] = None,
    stride: Annotated[int | None, typer.Option(
        "--stride", help="Sliding-window stride S (score the last S tokens of each window); 0 "
        "skips sliding evaluation \\[default: L/2].", show_default=False)] = None,
    eval_only: Annotated[bool, typer.Option(
        "--eval-only", help="Only evaluate the finished checkpoints in --out.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed for weights and data order.")] = 0,
    threads: Annotated[int, typer.Option(
        "--threads", help="torch CPU threads (0: the preset's, else torch's default).")] = 0,
    train_tokens: Annotated[int | None, typer.Option(
        "--train-tokens", help="Override the preset's training token budget per method.",
        show_default=False)] = None,
    rope_scaling: Annotated[str | None, typer.Option(
        "--rope-scaling", help="Also score the trained rotary model, without retraining, under "
        "these eval-time scalings: pi,ntk,yarn (rows rotary+pi, ...).", show_default=False)
    ] = None,
) -> None:
    from lsbench.extrapolate import run_extrapolate

    given = {p.opts[0]: ctx.params[p.name] for p in ctx.command.params  # as the user typed them
             if getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"}
    command = "lsbench extrapolate" + "".join(
        f" {opt}" + ("" if v is True else f" {v}") for opt, v in given.items())
    view = _ExtrapolateView()
    try:
        result = run_extrapolate(
            train_len=train_len, positions=positions_, corpus=corpus, out=out, preset=preset,
            eval_lens=eval_lens, stride=stride, eval_only=eval_only, device=device, seed=seed,
            threads=threads, train_tokens=train_tokens, rope_scaling=rope_scaling,
            command=command, events=view)
    except KeyboardInterrupt:
        view.progress.stop()
        resume = command if out else f"{command} --out {view.out}"
        err_console.print(f"[yellow]interrupted.[/] Checkpoints are saved; resume with: "
                          f"[bold]{resume}[/]", highlight=False)
        raise typer.Exit(130) from None
    finally:
        view.progress.stop()
    _print_extrapolation(result)


class _ExtrapolateView:
    """Rich progress for run_extrapolate's events: loss and tokens/s while training."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console)
        self.task = None
        self.out = None
        self.lens: list[int] = []
        self.ppl: dict[tuple[str, str], list[str]] = {}

    def __call__(self, event: str, **d) -> None:
        getattr(self, f"on_{event}", lambda **_: None)(**d)

    def _task(self, description: str, total: int, completed: int = 0) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, completed=completed,
                                           info="")

    def on_start(self, out, args, corpus, preset) -> None:
        self.out, self.lens = out, args["eval_lens"]
        nb = corpus["n_bytes"]
        console.print(
            f"[bold]extrapolate[/] L={args['train_len']}: {', '.join(args['positions'])} on "
            f"{args['device']} (threads: {args['threads']}), preset [bold]{preset['name']}[/] "
            f"(d_model={preset['d_model']}, layers={preset['n_layers']}, heads="
            f"{preset['n_heads']}), {args['train_tokens']:,} tokens / {args['train_steps']} "
            f"steps each", highlight=False)
        console.print(
            f"corpus {corpus['name']} ({corpus['split_method']} split; train {nb['train']:,} "
            f"B, valid {nb['valid']:,} B; sha256 {corpus['files_sha256'][:12]}); scoring "
            f"{args['eval_tokens']:,} tokens at {args['eval_lens']}"
            + (f", sliding stride {args['stride']} on the last {args['sliding_tokens']:,}"
               if args["stride"] else ""), highlight=False)
        console.print(f"writing {out}", highlight=False)
        self.progress.start()

    def on_train_start(self, position, start_step, total_steps, params) -> None:
        if start_step >= total_steps:
            self.progress.console.print(
                f"{position}: already trained (checkpoint complete)", highlight=False)
        elif start_step:
            self.progress.console.print(
                f"{position}: resuming at step {start_step}/{total_steps}", highlight=False)
        self._task(f"train {position}", total_steps, start_step)

    def on_train_step(self, position, step, total_steps, loss, tokens_per_s) -> None:
        self.progress.update(self.task, completed=step,
                             info=f"loss {loss:.3f}  {tokens_per_s:,.0f} tok/s")

    def on_train_end(self, position, **s) -> None:
        rate = f"{s['tokens_per_s']:,.0f} tok/s" if s["tokens_per_s"] else "-"
        self.progress.console.print(
            f"{position}: trained {s['tokens_trained']:,} tokens in {s['train_time_s']:.0f} s "
            f"({rate}), final train loss {s['final_train_loss']}", highlight=False)

    def on_loaded(self, position, step) -> None:
        self.progress.console.print(f"{position}: loaded checkpoint (step {step})",
                                    highlight=False)

    def on_eval_start(self, position, eval_len, eval_mode) -> None:
        self._task(f"eval {position} {eval_mode[:7]} {eval_len}", 1)

    def on_eval_batch(self, position, eval_len, eval_mode, done, total) -> None:
        self.progress.update(self.task, completed=done, total=total)

    def on_eval_end(self, **row) -> None:
        key = (row["position"], row["eval_mode"])
        self.ppl.setdefault(key, []).append(_fmt_ppl(row["ppl"]))
        if row["eval_len"] == self.lens[-1]:
            self.progress.console.print(
                f"{key[0]} {key[1]} ppl: " + ", ".join(
                    f"{n}: {p}" for n, p in zip(self.lens, self.ppl[key], strict=False)),
                highlight=False)

    def on_finish(self, out) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


def _fmt_ppl(ppl) -> str:
    if ppl is None:
        return "n/a"
    return f"{ppl:.2f}" if ppl < 1000 else f"{ppl:.3g}"


def _print_extrapolation(result) -> None:
    from lsbench.extrapolate.summary import summarize

    summary = summarize(result.rows, result.training, result.run)
    for t in summary.tables:
        table = Table(title=t.title, caption=t.caption or None)
        for i, col in enumerate(t.columns):
            table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in t.rows:
            table.add_row(*row)
        console.print(table)
    for w in summary.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for n in summary.notes:
        console.print(f"note: {n}", highlight=False)
    load = result.run.get("load_avg_1m", {})
    console.print(f"wall time {result.run['wall_time_s']:.0f} s (1-min load average "
                  f"{load.get('start')} at start, {load.get('end')} at the end)", highlight=False)
    for name in ("run.json", "extrapolation.csv", "training.csv"):
        console.print(f"wrote {result.out / name}", highlight=False)


# --- lsbench report / compare --------------------------------------------------------------


class ReportFormat(str, Enum):
    html = "html"
    md = "md"
    csv = "csv"


@app.command()
@friendly
def report(
    run_dirs: Annotated[list[str], typer.Argument(
        help="Run directories written by `lsbench run` or `lsbench extrapolate` "
             "(e.g. reports/latest).", show_default=False, metavar="RUN_DIR")],
    html: Annotated[str | None, typer.Option(
        "--html", help="Where to write the HTML page (default: RUN_DIR/report.html).",
        show_default=False, metavar="FILE")] = None,
    fmt: Annotated[ReportFormat, typer.Option(
        "--format", "-f", help="html: one self-contained page; md: GitHub Markdown tables "
        "with PNG plot links; csv: the pivot and summary tables.")] = ReportFormat.html,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Output for md (a file, or - to print it) or csv (a directory) "
        "(default: md is printed when stdout is a pipe or file, else RUN_DIR/report.md; csv: "
        "RUN_DIR/tables/).", show_default=False,
        metavar="PATH")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open the HTML page in a browser.")]
    = False,
) -> None:
    """Turn runs into tables, Fig-2-style plots and one self-contained HTML page.

    Plots are also saved as PNG and SVG under RUN_DIR/plots/.

    [bold]Exit codes[/]: 0 the report was written (also when every configuration failed: the
    page says so and lists the reasons); 1 a RUN_DIR is missing or holds no results yet, or
    the output cannot be written.
    """
    import webbrowser

    from lsbench.report import build_report

    if html and fmt is not ReportFormat.html:
        raise LsbenchError(f"--html writes an HTML page but --format is {fmt.value}; use "
                           "--out for Markdown or CSV output.")
    if fmt is ReportFormat.md and out is None and not sys.stdout.isatty():
        out = "-"  # `lsbench report RUN -f md > report.md` and pipes get the Markdown itself
    result = build_report(run_dirs, fmt.value, html or out)
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    if result.text is not None:
        print(result.text)
        return
    written = [f for f in result.files if f.suffix != ".png"]
    for f in written:
        console.print(f"wrote [bold]{f}[/] ({_size(f.stat().st_size)})", highlight=False)
    console.print(f"{result.n_plots} plot(s) (PNG + SVG under plots/), {result.n_tables} "
                  f"table(s), built in {result.seconds:.1f} s", highlight=False)
    if result.all_failed:
        console.print("[yellow]every configuration failed[/]: the report lists the reasons.")
    if open_ and fmt is ReportFormat.html:
        webbrowser.open(written[0].resolve().as_uri())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
@friendly
def compare(
    run_a: Annotated[str, typer.Argument(help="The baseline run directory.",
                                         show_default=False, metavar="RUN_A")],
    run_b: Annotated[str, typer.Argument(help="The new run directory.", show_default=False,
                                         metavar="RUN_B")],
    fail_above: Annotated[str | None, typer.Option(
        "--fail-above", help="Exit 2 when any significant slowdown or memory growth exceeds "
        "this, e.g. 5% (for CI); a config that ran in A but fails in B counts too.",
        show_default=False, metavar="PCT")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Compare runs from different devices anyway.")] = False,
    limit: Annotated[int, typer.Option(help="Rows to show (0: all).")] = 40,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    csv_file: Annotated[str | None, typer.Option(
        "--csv", help="Also write every compared config to this CSV file.",
        show_default=False, metavar="FILE")] = None,
) -> None:
    """Which configurations got faster or slower from RUN_A to RUN_B, with significance.

    Configs are matched by config_id. The ratio is B/A; a latency change is significant only
    when the two confidence intervals do not overlap; memory counts when it moves by more
    than 2%.

    [bold]Exit codes[/]: 0 compared (no regression above --fail-above); 1 a run is missing,
    the runs share no configs, or they came from different devices (without --force); 2 a
    significant regression exceeds --fail-above.
    """
    from lsbench.report.compare import compare_runs, parse_percent

    threshold = parse_percent(fail_above) if fail_above is not None else None
    cmp = compare_runs(run_a, run_b, force=force)
    if cmp.device_note:
        err_console.print(f"[yellow]warning:[/] {cmp.device_note}", highlight=False)
    if csv_file:
        try:
            cmp.table.to_csv(csv_file, index=False)
        except OSError as e:
            raise LsbenchError(f"cannot write {csv_file} ({e.strerror}).") from None
    bad = cmp.regressions(threshold) if threshold is not None else cmp.table.iloc[0:0]
    if as_json:
        print(json.dumps({
            "run_a": str(cmp.a.path), "run_b": str(cmp.b.path), "counts": cmp.counts(),
            "only_in_a": cmp.only_a, "only_in_b": cmp.only_b, "fail_above": threshold,
            "regressions": bad["config_id"].tolist(),
            "rows": json.loads(cmp.table.to_json(orient="records")),
        }, indent=2))
    else:
        _print_comparison(cmp, limit, threshold, bad)
    if threshold is not None and not bad.empty:
        raise typer.Exit(2)


def _print_comparison(cmp, limit: int, threshold: float | None, bad) -> None:
    from rich import box

    from lsbench.report.tables import fmt_num

    t = cmp.table
    table = Table(title=f"{cmp.b.name} vs {cmp.a.name} (ratio B/A, worst first)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("variant", "mode", "B×N", "A ms", "B ms", "B/A", "mem B/A", "change"):
        table.add_column(col, justify="left" if col in ("variant", "mode", "change")
                         else "right", no_wrap=True, min_width=11 if col == "variant" else None)
    colours = {"slower": "red", "now fails": "bold red", "more memory": "red",
               "faster": "green", "now runs": "green", "less memory": "green"}
    shown = t if limit <= 0 else t.head(limit)
    for r in shown.itertuples(index=False):
        colour = colours.get(r.change)
        change = f"[{colour}]{r.change}[/]" if colour else r.change
        table.add_row(
            r.variant, {"inference": "infer", "training": "train"}.get(r.mode, r.mode),
            f"{r.batch_size}×{int(r.seq_len):,}",
            fmt_num(r.latency_a_ms) or r.status_a, fmt_num(r.latency_b_ms) or r.status_b,
            _ratio_cell(r.latency_ratio, r.latency_significant),
            _ratio_cell(r.mem_ratio, r.mem_significant), change)
    console.print(table)
    if len(shown) < len(t):
        console.print(f"... {len(t) - len(shown)} more row(s); --limit 0 shows all.")
    counts = ", ".join(f"{k}: {v}" for k, v in cmp.counts().items())
    console.print(f"{len(t)} shared config(s) ({counts}); only in A: {cmp.only_a}, only in "
                  f"B: {cmp.only_b}. * = significant (confidence intervals do not overlap).",
                  highlight=False)
    if threshold is not None:
        if bad.empty:
            console.print(f"[green]no significant regression above {threshold:.1%}[/]")
        else:
            console.print(f"[bold red]{len(bad)} significant regression(s) above "
                          f"{threshold:.1%}[/]: " + ", ".join(bad["config_id"].head(10)),
                          highlight=False)


def _ratio_cell(ratio: float, significant: bool) -> str:
    if ratio != ratio:  # NaN: one side did not run
        return "-"
    return f"{ratio:.2f}×" + ("*" if significant else "")
