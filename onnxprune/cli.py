"""Command line: argument parsing, exit codes and one-line errors. The commands themselves live in
onnxprune/commands.py, imported only once the arguments parse: `--help`, `--version` and usage
errors never pay for onnx, onnxruntime and numpy (issue #14 item 14).

    onnxprune prune in.onnx out.onnx --ratio 0.3 --report r.json
    onnxprune in.onnx out.onnx --ratio 0.3          # same, the form deployment scripts use
    onnxprune analyze in.onnx
"""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys

from onnxprune import __version__
from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.report.progress import Progress

COMMANDS = ("prune", "analyze", "profile")
# the scorer registry's names, listed here so parsing needs no numpy (tests/test_cli.py checks them)
SCORER_NAMES = ("bn-scale", "l1", "l2", "l2-filter", "random", "recon", "saliency", "sp-lamp", "sp-lamp-folded", "vbp")


def _common(p):
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="fix symbolic input dims for analysis, verification and timing (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="freeze channels touched by nodes whose name or op type matches (glob; repeatable)")
    p.add_argument("--heads", action="store_true",
                   help="transformers: prune whole attention heads (q/k/v/out blocks and Reshape head counts)")
    p.add_argument("--embed-dim", action="store_true",
                   help="transformers: also prune the residual stream (hidden dim) - off by default")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider for latency (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for latency (default: all cores)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="batch size for analysis, verification and timing where the batch dim is symbolic (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _no_latency(p):
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")


def _latency_table_args(p):
    p.add_argument("--latency-cmd", metavar="CMD", help="time candidates with a command, e.g. "
                   "'ssh board ./bench {model}'; it prints 'latency_ms: X' (see README)")
    p.add_argument("--cache-dir", metavar="DIR", help="latency model cache (default $ONNXPRUNE_CACHE/latency, else ~/.cache/onnxprune/latency)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor store the latency model cache: measure it afresh for this run only")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="onnxprune", description="Structured pruning for ONNX models.",
        epilog="'onnxprune IN OUT [options]' (without a command) means 'onnxprune prune IN OUT [options]'.")
    ap.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="prune channels and write a slimmer model")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels removed per group (0..1)")
    p.add_argument("--ratio-dw", type=float, default=None,
                   help="ratio for groups that pass through depthwise convs (DEPrune DW/PW setting)")
    p.add_argument("--global", dest="global_rank", action="store_true",
                   help="rank channels across groups (scores normalized by group mean) instead of per group")
    p.add_argument("--scorer", default="l2", choices=SCORER_NAMES, help="channel importance (default l2)")
    # -- calibration and training-free recovery (issue #4) --
    p.add_argument("--calib", metavar="DATA", help="calibration data: .npz (arrays named like the inputs; "
                   "FILE.npz:KEY picks one), .npy, or a folder of images (see --preprocess)")
    p.add_argument("--preprocess", action="append", default=None, metavar="KEY=VAL",
                   help="image folders: size=HxW, mean=a,b,c, std=a,b,c, layout=NCHW|NHWC, scale=1/255 (repeatable)")
    p.add_argument("--calib-batch", type=int, default=None, metavar="N", help="calibration batch size (default 32)")
    p.add_argument("--calib-limit", type=int, default=None, metavar="N", help="use at most N calibration samples")
    p.add_argument("--compensate", choices=["mean", "lstsq", "none"], default=None,
                   help="mean: fold the calibration mean of removed channels into the consumers' biases; "
                        "lstsq: also refit the kept weight columns by least squares on the calibration data "
                        "(default: mean for --scorer vbp, else none; needs --calib)")
    p.add_argument("--per-position", action="store_true",
                   help="compensation constants per position (token or pixel) instead of per channel: a constant "
                        "map added after each compensated consumer (needs static input dims except the batch; "
                        "with --ratio or --macs)")
    p.add_argument("--seed", type=int, default=0, help="seed of --scorer random (default 0)")
    # -- budgets (issue #3) --
    p.add_argument("--budget", metavar="LAT", help="latency budget: 11ms, 900us, 0.011s or 0.6x / 60%% of the "
                   "measured baseline (group knapsack on a measured latency table, then a closed loop)")
    p.add_argument("--macs", metavar="M", help="MACs budget: 50%%, 0.5x or 1.2G / 300M")
    p.add_argument("--params", metavar="P", help="parameter budget: 50%%, 0.5x or 3M / 500K")
    p.add_argument("--peak-memory", metavar="B", help="peak activation memory budget: 3.6MB, 512KiB or 50%%")
    p.add_argument("--knapsack-value", choices=["lamp", "members", "energy"], default=None,
                   help="budgets: what the knapsack keeps most of. members (default): each group's LAMP-normalized "
                        "values times its number of weight members (residual streams count for every layer they "
                        "feed: more accuracy without fine-tuning); lamp: the SP-LAMP paper's sum of LAMP-normalized "
                        "scores; energy (--scorer vbp): each channel's share of every consumer's output energy, "
                        "summed over its consumers")
    p.add_argument("--round-to", type=_round_to, default=None, metavar="N|auto",
                   help="keep channel counts at multiples of N (hardware-friendly widths); 'auto': with a "
                        "latency budget, keep the widest width of each measured latency step")
    p.add_argument("--stages", type=int, default=1, metavar="K",
                   help="reach the budget in K stages, re-scoring and re-profiling the model pruned so far")
    p.add_argument("--latency-model", choices=["op", "table", "macs"], default=None,
                   help="latency costs: op (default): an op-level model fitted to ONNX Runtime's per-node profile of "
                        "random width assignments, solved by a coupled knapsack; table: per-group whole-model "
                        "deltas (the default with --latency-cmd); macs: analytic MACs share")
    p.add_argument("--min-macs", type=float, default=0.2, metavar="F",
                   help="a latency budget refuses a result with less than F of the MACs (default 0.2)")
    _latency_table_args(p)
    p.add_argument("--report", metavar="JSON", help="write the full report as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw the report: kept width per group, cost ratios, budget "
                   "solves (.png/.svg/.pdf; needs matplotlib: pip install 'onnxprune[plot]')")
    p.add_argument("--no-verify", action="store_true", help="skip the mask-oracle check")
    _no_latency(p)
    _common(p)
    pr = sub.add_parser("profile", help="build (or show the cached) latency model that --budget uses")
    pr.add_argument("input")
    _latency_table_args(pr)
    pr.add_argument("--latency-model", choices=["op", "table"], default=None,
                    help="op (default): the op-level model a latency budget uses; table: the per-group table "
                         "(the default with --latency-cmd)")
    pr.add_argument("--rebuild", action="store_true", help="measure the model afresh even if cached, and store it")
    pr.add_argument("--json", metavar="FILE", help="write the model (or table) as JSON")
    pr.add_argument("--check", type=int, default=None, metavar="K",
                    help="build the op-level latency model and measure K held-out random width assignments "
                         "(0.3-1.0 of each group), printing predicted next to measured")
    _common(pr)
    a = sub.add_parser("analyze", help="print channel groups, MACs, params and baseline latency")
    a.add_argument("input")
    a.add_argument("--json", metavar="FILE", help="write groups and stats as JSON")
    a.add_argument("-v", "--verbose", action="store_true", help="list members of every group")
    _no_latency(a)
    _common(a)
    return ap


def with_command(argv: list[str]) -> list[str]:
    """`onnxprune IN OUT ...` means `onnxprune prune IN OUT ...`; a first word that is no file but
    close to a command is a typo (`analyse`), said as such rather than read as the input model."""
    if not argv or argv[0] in COMMANDS:
        return argv
    if argv[0].startswith("-"):
        # options first (`onnxprune --debug IN OUT ...`): still an implicit prune, unless a command
        # word follows or the options are the top level's own (--help, --version)
        top_level = argv[0] in ("-h", "--help", "--version")
        return argv if top_level or any(a in COMMANDS for a in argv) else ["prune"] + argv
    first = argv[0]
    if not os.path.exists(first):
        close = difflib.get_close_matches(first.lower(), COMMANDS, n=1, cutoff=0.6)
        if close:
            raise OnnxPruneError(f"unknown command '{first}': did you mean '{close[0]}'? "
                                 f"(commands: {', '.join(COMMANDS)})")
    return ["prune"] + argv


def split_input_shapes(values: list[str]) -> list[str]:
    """--input-shape entries: repeated flags, or one flag with comma-separated entries
    (`a=1x64,b=1x64`, as the Python API takes them), or both."""
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        full = with_command(argv)
    except OnnxPruneError as e:
        print(f"onnxprune: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(full)
    args.input_shape = split_input_shapes(args.input_shape)
    args.command_line = ["onnxprune"] + argv

    def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C, so no half-written file stays behind
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (main() called from a user's worker thread)
        pass
    args.progress = Progress(enabled=not args.quiet)
    return _run(args)


NOTHING_TO_DO = "nothing to do: give --ratio (e.g. --ratio 0.3) or a budget (--budget 0.6x, --macs 50%)"


def require_target(args) -> None:
    """`prune` without a ratio or a budget: said before the commands (and onnx) are imported."""
    if args.command == "prune" and args.ratio is None and all(
            b is None for b in (args.budget, args.macs, args.params, args.peak_memory)):
        raise OnnxPruneError(NOTHING_TO_DO)


def _run(args) -> int:
    """The command, with every failure turned into an exit code and one line on stderr."""
    try:
        require_target(args)
        from onnxprune import commands  # deferred: start-up time, issue #14 item 14
        return commands.run(args)
    except InternalError as e:  # our fault, said in one line: exit 1 as any internal error
        args.progress.abort()
        print(f"onnxprune: {e}", file=sys.stderr)
        return 1
    except OnnxPruneError as e:
        args.progress.abort()
        print(f"onnxprune: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and friends: every file was written before printing
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        args.progress.abort()
        print("onnxprune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback wall for users; --debug shows it
        args.progress.abort()
        if getattr(args, "debug", False):
            raise
        msg = str(e).strip().splitlines()
        print(f"onnxprune: internal error: {type(e).__name__}: {msg[0] if msg else ''} (rerun with --debug)",
              file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so the interpreter's final flush
    does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _round_to(text: str):
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer or 'auto'") from None
    if n < 1:
        raise argparse.ArgumentTypeError("expected a positive integer or 'auto'")
    return n


if __name__ == "__main__":
    sys.exit(main())
