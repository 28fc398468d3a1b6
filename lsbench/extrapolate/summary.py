"""The terminal summary of an extrapolation run as plain table data (the CLI renders it with
rich; nothing here prints). Cells may carry rich colour markup ([red]…[/])."""

from __future__ import annotations

from dataclasses import dataclass, field

from lsbench.extrapolate.analysis import CONTROL, CONTROL_MARGIN
from lsbench.extrapolate.evaluate import NONOVERLAPPING, SLIDING


@dataclass
class TextTable:
    title: str
    columns: list[str]  # the first is left-aligned, the rest right-aligned
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Summary:
    tables: list[TextTable] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt_ppl(ppl: float | None) -> str:
    if ppl is None:
        return "n/a"
    return f"{ppl:.2f}" if ppl < 1000 else f"{ppl:.3g}"


def _ratio_cell(r: dict | None) -> str:
    if r is None or r.get("ppl_ratio") is None:
        return "n/a"
    ratio = r["ppl_ratio"]
    style = "red" if ratio > 1.5 else "green" if ratio <= 1.02 else "yellow"
    return f"[{style}]{ratio:.2f}×[/] {r['delta_bits']:+.2f}"


def summarize(rows: list[dict], training: list[dict], run: dict) -> Summary:
    """Per eval mode a perplexity table and a ratio table (ppl(n)/ppl(L) and the loss difference
    in bits per byte), the training table, the control warnings and the notes that qualify them."""
    args = run["args"]
    L, lens = args["train_len"], args["eval_lens"]
    out = Summary()
    modes = [NONOVERLAPPING] + ([SLIDING] if args.get("stride") else [])
    heads = [f"{n}\n{n / L:.3g}L" for n in lens]
    for mode in modes:
        by_pos: dict[str, dict[int, dict]] = {}
        for r in rows:
            if r["eval_mode"] == mode:
                by_pos.setdefault(r["position"], {})[r["eval_len"]] = r
        scored = (f"stride {args['stride']}, {args['sliding_tokens']:,} tokens" if mode == SLIDING
                  else f"{args['eval_tokens']:,} tokens")
        widths = [(r["ppl_ci_high"] - r["ppl_ci_low"]) / 2 / r["ppl"] for r in rows
                  if r["eval_mode"] == mode and r.get("ppl_ci_high") is not None
                  and r.get("ppl") and r["ppl_ci_high"] != float("inf")]
        low = any(r.get("low_precision") for r in rows if r["eval_mode"] == mode)
        cells = [[pos, *(fmt_ppl(by_len.get(n, {}).get("ppl")) for n in lens)]
                 for pos, by_len in by_pos.items()]
        notes = (["n/a = beyond a learned table"] if any("n/a" in c for c in cells) else []) + (
            [f"95% CIs of the ppl: ±{max(widths):.1%} at the widest"] if widths else []) + (
            ["LOW PRECISION: fewer than 16k tokens scored per length"] if low else [])
        out.tables.append(TextTable(
            f"perplexity, trained at L={L}, {mode} ({scored})", ["position", *heads], cells,
            "; ".join(notes)))
        out.tables.append(TextTable(
            f"ppl(n)/ppl(L) and loss difference in bits per byte, {mode}", ["position", *heads],
            [[pos, *(_ratio_cell(by_len.get(n)) for n in lens)] for pos, by_len in by_pos.items()],
            "green ≤ 1.02×, red > 1.5×"))
    out.tables.append(TextTable(
        "training (same data, seed and token budget per method)",
        ["position", "params", "tokens", "time s", "tok/s", "peak MiB", "final loss", "peak lr"],
        [[t["position"], f"{t['params']:,}", f"{t['tokens_trained']:,}",
          f"{t['train_time_s']:.0f}", f"{t['tokens_per_s']:,.0f}" if t["tokens_per_s"] else "-",
          "-" if t["peak_mem_mib"] is None else f"{t['peak_mem_mib']:.1f}",
          f"{t['final_train_loss']}", _lrs(run, t["position"])] for t in training]))
    out.warnings = [*run.get("warnings", []),
                    *(w["message"] for w in run.get("control_warnings", []))]
    positions = [t["position"] for t in training]
    if CONTROL not in positions:
        out.warnings.append(f"no `{CONTROL}` control was trained (add it to --positions): "
                            "nothing shows whether a flat curve means the method extrapolates "
                            "or never learned to use position.")
    else:
        out.notes.append(f"control: `{CONTROL}` (no position information); every method's ppl "
                         f"at L should be at least {CONTROL_MARGIN:.0%} below it.")
    ceil = run.get("eval_ceilings")
    if ceil:
        out.notes.append(
            f"ceilings on this eval stream: byte unigram ppl {ceil['unigram_ppl']:.1f}, bigram "
            f"{ceil['bigram_ppl']:.1f} (fit on the train split): a model that lost all context "
            "would sit near the unigram, so ratios here cannot reach the paper's word-level "
            "blow-ups; compare the bits.")
    if run.get("train_len_note"):
        out.notes.append(run["train_len_note"])
    return out


def _lrs(run: dict, position: str) -> str:
    """Peak lr of the model's weights, plus any group with its own multiplier."""
    groups = run.get("optimizer", {}).get(position, [])
    base = next((g["peak_lr"] for g in groups if g["lr_mult"] == 1.0), None)
    text = "-" if base is None else f"{base:.2g}"
    return text + "".join(f" (pe ×{g['lr_mult']:g})" for g in groups if g["lr_mult"] != 1.0)
