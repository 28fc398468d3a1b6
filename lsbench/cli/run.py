"""`lsbench run`: a thin wrapper over lsbench.sweep (plan, execute, summary tables)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lsbench.cli._app import app, console, err_console, friendly
from lsbench.errors import LsbenchError

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
        "--mode", help="inference, training, prefill (causal forward that builds the decoding "
        "state) or decode (one token at depth N = each --seq-lens); comma-separated for several.",
        show_default=False)] = None,
    dtype: Annotated[str | None, typer.Option(
        "--dtype", help="float32, bfloat16 or float16 (CUDA only).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu or cuda.", show_default=False)] = None,
    compile_: Annotated[str | None, typer.Option(
        "--compile", help="torch.compile the timed step: default, reduce-overhead (CUDA graphs "
        "on CUDA) or max-autotune; compile time is recorded per row (compile_s), not timed.",
        show_default=False)] = None,
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
    executor: Annotated[str, typer.Option(
        "--executor", help="local (one worker), gpus (one worker per visible GPU) or ray "
        "(Ray actors; RAY_ADDRESS or a local instance; pip install 'lsbench[ray]').")] = "local",
    workers: Annotated[int | None, typer.Option(
        "--workers", help="With --executor ray: how many workers (default: one per GPU; 1 on "
        "CPU, where workers on one machine would contend).", show_default=False)] = None,
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
        "compile": compile_,
        "resume": str(resume_dir) if resume_dir else None, "force": force or None,
        "mem_budget": mem_budget, "timeout": timeout, "threads": threads,
        "executor": executor if executor != "local" else None, "workers": workers}.items()
        if v is not None}
    command = "lsbench run" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in given.items())
    req = RunRequest(
        suite=suite, out=Path(out) if out and not resume else None, resume=resume_dir,
        force=force, variants=S.parse_list("--variants", variants_),
        seq_lens=S.parse_int_list("--seq-lens", seq_lens),
        batch_sizes=S.parse_int_list("--batch-sizes", batch_sizes),
        modes=S.parse_list("--mode", mode), dtype=dtype, device=device, compile=compile_,
        mem_budget_bytes=S.parse_size(mem_budget) if mem_budget is not None else None,
        timeout_s=timeout, threads=threads, executor=executor, workers=workers,
        command=command, args=given)
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

    from lsbench.sweep.grid import describe, device_variants
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
            left = device_variants(s, plan.device)[1]
            if left:
                console.print(f"[dim]left out of \"all\" (cannot run on {plan.device}): "
                              f"{', '.join(left)}[/]", highlight=False)
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
    contended = sum(1 for r in outcome.rows if r.get("contended"))
    console.print("rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                  + (f"; {noisy} noisy (~, IQR/median > 10%)" if noisy else ""), highlight=False)
    if contended:
        err_console.print(
            f"[yellow]warning:[/] {contended} row(s) were timed while another process (or a "
            "slow host) took the CPU (!, re-timed; `contention` in results.jsonl says what was "
            "seen, `threads` whether one thread was kept); their latency is likely too high: "
            "rerun on a quiet machine.", highlight=False)
    _machine_summary(outcome)
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

def _machine_summary(outcome) -> None:
    """The canary and the hypervisor's steal over the run (issue 21): one line, and a warning
    when the machine changed speed mid-run."""
    from lsbench.measure.canary import describe

    info = outcome.info
    series = (info.get("canary") or {}).get("series") or []
    steal = info.get("steal_share")
    if series or steal is not None:
        console.print("canary: " + (describe(series) or "no reading")
                      + ("" if steal is None else f"; hypervisor steal {steal:.1%} of the CPU "
                         "over the run"), highlight=False)
    drift = sum(1 for r in outcome.rows if r.get("drift"))
    if drift:
        err_console.print(
            f"[yellow]warning:[/] {drift} row(s) were measured while the canary (a fixed "
            "workload) ran at another speed than its median over the run (§; `drift` in "
            "results.jsonl): "
            "the machine changed speed, so compare them with care or rerun.", highlight=False)


# --- lsbench extrapolate -------------------------------------------------------------------
