"""`lsbench extrapolate`: a thin wrapper over lsbench.extrapolate."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lsbench.cli._app import app, console, err_console, friendly

_EXTRAPOLATE_HELP = """Train short, test long: perplexity of position methods past the train length.

Trains a small causal LM per position method at --train-len on the same data, seed and token
budget, then scores one held-out stream at L×{1, 1.5, 2, 4, 8, 16} (nonoverlapping windows, and
sliding windows with --stride). Writes run.json, extrapolation.csv, training.csv and checkpoints
to reports/<timestamp>-extrapolate/. Interrupted? Rerun the same command with [bold]--out DIR[/]
to resume; [bold]--eval-only --out DIR[/] rescores trained checkpoints.

[bold]--task recall[/] trains each method on MQAR retrieval at L instead (several seeds) and scores
its query accuracy at the same multiples of L (recall.csv, recall_summary.csv); give it the same
--out as an LM run and `lsbench report` draws accuracy beside perplexity.
"""


@app.command("extrapolate", help=_EXTRAPOLATE_HELP)
@friendly
def extrapolate_cmd(
    ctx: typer.Context,
    train_len: Annotated[int | None, typer.Option(
        "--train-len", "-L", help="Training length L (tokens = bytes) \\[default: 512; for "
        "--task recall the preset's: 64 on cpu].", show_default=False)] = None,
    positions_: Annotated[str | None, typer.Option(
        "--positions", help="Comma-separated position methods (`lsbench list positions`); "
        "xpos+bca rescores the xpos model with blockwise causal attention (no retraining) "
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
    task: Annotated[str, typer.Option(
        "--task", help="lm (perplexity on a byte corpus) or recall (MQAR query accuracy).")
    ] = "lm",
    seeds: Annotated[int | None, typer.Option(
        "--seeds", help="--task recall: seeds per method, for the 95% CI \\[default: 3].",
        show_default=False)] = None,
    rope_scaling: Annotated[str | None, typer.Option(
        "--rope-scaling", help="Also score the trained rotary model, without retraining, under "
        "these eval-time scalings: pi,ntk,yarn (rows rotary+pi, ...).", show_default=False)
    ] = None,
) -> None:
    from lsbench.extrapolate import run_extrapolate
    from lsbench.extrapolate.recall import LM_ONLY, parse_task, run_recall

    given = {p.opts[0]: ctx.params[p.name] for p in ctx.command.params  # as the user typed them
             if getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"}
    command = "lsbench extrapolate" + "".join(
        f" {opt}" + ("" if v is True else f" {v}") for opt, v in given.items())
    _check_task_options(parse_task(task), given, LM_ONLY)
    view = _ExtrapolateView()
    if task == "recall":
        scored = "Scored rows are in recall.csv"
        recall = _interruptible(view, command, out, scored, lambda: run_recall(
            train_len=train_len, positions=positions_, out=out, preset=preset,
            eval_lens=eval_lens, device=device, seed=seed, seeds=seeds, threads=threads,
            command=command, events=view))
        _print_recall(recall)
        return
    result = _interruptible(view, command, out, "Checkpoints are saved", lambda: run_extrapolate(
        train_len=512 if train_len is None else train_len, positions=positions_,
        corpus=corpus, out=out, preset=preset, eval_lens=eval_lens, stride=stride,
        eval_only=eval_only, device=device, seed=seed, threads=threads,
        train_tokens=train_tokens, rope_scaling=rope_scaling, command=command, events=view))
    _print_extrapolation(result)


def _interruptible(view, command: str, out, saved: str, work):
    """`work()` with the progress display; Ctrl-C stops it and says what is kept (`saved`)
    and the command that resumes, exit code 130."""
    try:
        return work()
    except KeyboardInterrupt:
        view.progress.stop()
        resume = command if out else f"{command} --out {view.out}"
        err_console.print(f"[yellow]interrupted.[/] {saved}; resume with: [bold]{resume}[/]",
                          highlight=False)
        raise typer.Exit(130) from None
    finally:
        view.progress.stop()


def _check_task_options(task: str, given: dict, lm_only: tuple[str, ...]) -> None:
    from lsbench.errors import LsbenchError

    if task == "recall":
        wrong = [o for o in lm_only if o in given]
        if wrong:
            raise LsbenchError(f"{', '.join(wrong)} only applies to --task lm (the byte-corpus "
                               "LM); drop it for --task recall.")
    elif "--seeds" in given:
        raise LsbenchError("--seeds applies to --task recall (the LM task trains one seed: "
                           "use --seed); add --task recall or drop --seeds.")


def _print_tables(tables) -> None:
    """TextTables (lsbench.extrapolate.summary) as rich tables: the first column left."""
    for t in tables:
        table = Table(title=t.title, caption=t.caption or None)
        for i, col in enumerate(t.columns):
            table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in t.rows:
            table.add_row(*row)
        console.print(table)


def _print_recall(result) -> None:
    from lsbench.extrapolate.recall import summary_tables

    _print_tables(summary_tables(result))
    console.print(f"wall time {result.meta['wall_time_s']:.0f} s", highlight=False)
    for name in ("recall.json", "recall.csv", "recall_summary.csv"):
        console.print(f"wrote {result.out / name}", highlight=False)


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

    def on_start(self, out, args, corpus, preset, warnings=()) -> None:
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
        for w in warnings:
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
        console.print(f"writing {out}", highlight=False)
        self.progress.start()

    def on_recall_start(self, out, args, preset, recall) -> None:
        self.out = out
        console.print(
            f"[bold]extrapolate --task recall[/] L={args['train_len']}: "
            f"{', '.join(args['positions'])} × seeds {args['seeds']} on {args['device']}, preset "
            f"[bold]{preset['name']}[/] (d_model={preset['d_model']}, layers="
            f"{preset['n_layers']}, heads={preset['n_heads']}); MQAR {recall['kv_pairs']} pairs, "
            f"vocab {recall['vocab']}, {recall['steps']} steps × {recall['batch_size']}; "
            f"scoring {recall['eval_examples']} sequences at {args['eval_lens']}",
            highlight=False)
        console.print(f"writing {out}", highlight=False)
        self.progress.start()

    def on_recall_trained(self, position, seed, final_train_loss, train_s) -> None:
        self.progress.console.print(
            f"{position} seed {seed}: trained in {train_s:.0f} s, final loss "
            f"{final_train_loss}", highlight=False)

    def on_recall_scored(self, **row) -> None:
        acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        self.progress.console.print(
            f"  {row['position']} seed {row['seed']} at {row['eval_len']}: accuracy {acc}",
            highlight=False)

    def on_estimate(self, train_s, eval_s, total_s, warmup_s, how) -> None:
        per = ", ".join(f"{n} {train_s[n] + eval_s[n]:.0f}" for n in train_s)
        console.print(
            f"expected duration ~{total_s / 60:.1f} min: training {sum(train_s.values()):.0f} s, "
            f"evaluation {sum(eval_s.values()):.0f} s (per method, s: {per}); from a "
            f"{warmup_s:.0f} s warm-up at the current load", highlight=False)

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
    _print_tables(summary.tables)
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
