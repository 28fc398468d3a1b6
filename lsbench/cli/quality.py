"""`lsbench quality`: a thin wrapper over lsbench.quality.run_quality."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.table import Table

from lsbench.cli._app import app, console, err_console, friendly

_QUALITY_HELP = """Does the cheap attention still do the job? Recall accuracy and fidelity.

Trains the same small model (embedding, pre-norm blocks, head) with each attention variant on
multi-query associative recall (MQAR, Zoology: key-value pairs, then queries at power-law gaps)
for a fixed number of steps, over several seeds, and reports query accuracy with a 95% interval.
Encoder-only variants get the masked form of the task (the answer is predicted at a mask token
from the whole sequence). Then measures fidelity: each approximate variant's output against
exact softmax attention on the same q, k, v from the trained softmax model, N = 256 ... 8K,
float64. Writes run.json, quality.csv, summary.csv and fidelity.csv to
reports/<timestamp>-quality/; rerun with the same [bold]--out DIR[/] to resume.
"""


@app.command("quality", help=_QUALITY_HELP)
@friendly
def quality_cmd(
    ctx: typer.Context,
    variants_: Annotated[str | None, typer.Option(
        "--variants", help="Comma-separated variants (`lsbench list variants`) \\[default: the "
        "preset's].", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="tiny (seconds), cpu (<= 20 min on 2 cores) or gpu \\[default: gpu on "
        "CUDA, else cpu].", show_default=False)] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Run directory (default reports/<timestamp>-quality); an existing "
        "one resumes.", show_default=False)] = None,
    seeds: Annotated[int | None, typer.Option(
        "--seeds", help="Number of seeds (0, 1, ...) \\[default: the preset's, 3].",
        show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Training steps per variant and seed \\[default: the preset's].",
        show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int, typer.Option(
        "--threads", help="torch CPU threads (0: the preset's, else torch's default).")] = 0,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Training processes on a CPU \\[default: the preset's; cpu: 2, one "
        "thread each].", show_default=False)] = None,
    fidelity: Annotated[bool, typer.Option(
        "--fidelity/--no-fidelity", help="Measure fidelity to exact softmax attention.")] = True,
) -> None:
    from lsbench.quality import run_quality

    given = {p.opts[0]: ctx.params[p.name] for p in ctx.command.params
             if getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"}
    command = "lsbench quality" + "".join(
        f" {opt}" + ("" if v is True else f" {v}") for opt, v in given.items())
    names = [v.strip() for v in variants_.split(",") if v.strip()] if variants_ else None
    view = _View()
    try:
        result = run_quality(variants=names, preset=preset, out=out, seeds=seeds, steps=steps,
                             device=device, threads=threads, fidelity=fidelity, workers=workers,
                             command=command, events=view)
    except KeyboardInterrupt:
        resume = command if out else f"{command} --out {view.out}"
        err_console.print(f"[yellow]interrupted.[/] Finished rows are saved; resume with: "
                          f"[bold]{resume}[/]", highlight=False)
        raise typer.Exit(130) from None
    _print_summary(result)


class _View:
    """Prints one line per finished (variant, seed); the library never prints."""

    def __init__(self) -> None:
        self.out = None

    def __call__(self, event: str, **d) -> None:
        if event == "start":
            self.out = d["out"]
            p = d["preset"]
            console.print(
                f"[bold]quality[/] preset {p['name']}: MQAR vocab {p['vocab_size']}, settings "
                f"(N, pairs) {p['settings']}, d_model {p['d_model']}, {p['n_layers']} layers, "
                f"{d['args']['steps']} steps × batch {p['batch_size']}, seeds "
                f"{d['args']['seeds']}, {d['args']['device']} (threads {d['args']['threads']});"
                f" {d['total']} rows ({d['done']} already done) -> {d['out']}", highlight=False)
        elif event == "row":
            r = d["row"]
            tail = (f"acc {r['accuracy']:.3f}  loss {r['final_loss']:.3f}  {r['train_s']:.0f} s"
                    if r["status"] == "ok" else f"{r['status']}: {r['reason']}")
            console.print(f"  {r['variant']:<14} {r['task_form']:<6} N={r['seq_len']} "
                          f"P={r['kv_pairs']} seed {r['seed']}: {tail}", highlight=False)
        elif event == "fidelity":
            console.print(f"  fidelity at N={d['seq_len']}", highlight=False)
        elif event == "fidelity_skipped":
            console.print(f"[yellow]fidelity skipped:[/] {d['reason']}", highlight=False)


def _print_summary(result) -> None:
    s = result["summary"]
    table = Table(title="MQAR query accuracy (mean ± 95% CI over seeds)")
    for col in ("variant", "form", "N", "pairs", "seeds", "accuracy", "train s"):
        table.add_column(col, justify="left" if col in ("variant", "form") else "right")
    for r in s.itertuples():
        if r.status != "ok":
            table.add_row(r.variant, r.task_form, str(r.seq_len), str(r.kv_pairs), "0",
                          f"{r.status}: {r.reason}", "")
            continue
        half = (r.accuracy_ci_high - r.accuracy_mean) if not math.isnan(r.accuracy_ci_high) \
            else float("nan")
        table.add_row(r.variant, r.task_form, str(r.seq_len), str(r.kv_pairs), str(r.seeds),
                      f"{r.accuracy_mean:.3f} ± {half:.3f}", f"{r.train_s_mean:.0f}")
    console.print(table)
    _print_fidelity(result["fidelity"])
    console.print(f"written to {result['out']}", highlight=False)


def _print_fidelity(rows: list[dict]) -> None:
    """Relative error to exact softmax (mean over layers) per variant and N."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return
    lens = sorted({r["seq_len"] for r in ok})
    err: dict[str, dict[int, list[float]]] = {}
    for r in ok:
        err.setdefault(r["variant"], {}).setdefault(r["seq_len"], []).append(r["rel_err"])
    table = Table(title="Fidelity: relative error to exact softmax attention (float64)")
    table.add_column("variant")
    for n in lens:
        table.add_column(f"{n:,}", justify="right")
    for v, by_n in err.items():
        table.add_row(v, *(f"{sum(by_n[n]) / len(by_n[n]):.3g}" if n in by_n else "—"
                           for n in lens))
    for r in {r["variant"]: r for r in rows if r.get("status") != "ok"}.values():
        table.add_row(r["variant"], f"undefined: {r['reason']}", *[""] * (len(lens) - 1))
    console.print(table)
