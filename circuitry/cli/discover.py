"""`circuitry discover MODEL`: find a task's circuit by batched ablation sweeps and write it as a spec.

`--task` is a task plugin's name or a task file (`kind: Task`; `circuitry.discovery.names_a_file` decides)."""

from __future__ import annotations

import argparse
import math

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output

HELP = "find a task's circuit and write it as a spec"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    from circuitry.discovery import (
        DEFAULT_MARGIN,
        DEFAULT_ROLE_THRESHOLD,
        DEFAULT_TARGET,
        DEFAULT_TASK,
    )

    p = sub.add_parser("discover", help=HELP,
                       description="Score every head with the detectors, prune components and then Q/K/V edges "
                                   "by greedy rounds of batched mean-ablation / path-patching sweeps while the "
                                   "circuit recovers at least --target of the task metric, assign roles, and "
                                   "write a v1 spec whose thresholds are the measured values with a margin.")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME, a path, hf:NAME ...")
    p.add_argument("--task", default=DEFAULT_TASK, metavar="NAME|FILE",
                   help=f"a task plugin (default {DEFAULT_TASK}) or a task file (kind: Task; a path, or a name "
                        f"ending in .yaml / .yml): its clean prompts are the data, components and edges are "
                        f"replaced by their activations on its corrupted prompts")
    p.add_argument("--data", default=None, metavar="REF",
                   help="data NAME[:key=value,...] instead of the task's (parameters of the task's own dataset "
                        "override its settings)")
    p.add_argument("--out", default=None, metavar="SPEC.yaml", help="write the spec here (atomically)")
    p.add_argument("--json", action="store_true", help="print the circuit as one JSON document")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"threshold margin: bounds at v - m|v| (default {DEFAULT_MARGIN})")
    p.add_argument("--target", type=float, default=DEFAULT_TARGET,
                   help=f"fraction of the task metric the circuit must recover (default {DEFAULT_TARGET})")
    p.add_argument("--role-threshold", type=float, default=DEFAULT_ROLE_THRESHOLD,
                   help=f"detector score that gives a head its role (default {DEFAULT_ROLE_THRESHOLD})")
    p.add_argument("--method", choices=("prune", "eap", "eap-ig", "eap-ig-act"), default="prune",
                   help="prune (default): greedy rounds of ablation sweeps; eap, eap-ig, eap-ig-act: score every "
                        "edge by attribution patching and keep the fewest top edges whose exact faithfulness "
                        "reaches --target, with the faithfulness curve")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="integrated-gradient steps of eap-ig and eap-ig-act (default 5)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="attribution methods: draw the faithfulness curve (needs matplotlib)")
    p.add_argument("--sweeps", choices=("batched", "naive"), default="batched",
                   help="batched sweeps (default) or one forward pass per intervention")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from circuitry.discovery import TaskNotDone, check_task_data, discover, resolve_task, write_spec
    from circuitry.errors import UsageError
    from circuitry.sources import load_model

    if args.out:
        check_output(args.out, "--out", (".yaml",))
    attributed = args.method != "prune"
    if not attributed and (args.steps is not None or args.plot):
        raise UsageError(f"--{'steps' if args.steps is not None else 'plot'} applies to --method eap, eap-ig or "
                         f"eap-ig-act, not prune")
    if args.steps is not None and (args.steps < 1 or args.method == "eap"):
        raise UsageError(f"--steps must be >= 1 and applies to eap-ig and eap-ig-act (got {args.steps} with "
                         f"--method {args.method})")
    if args.plot:
        check_output(args.plot, "--plot", (".png",))
        from circuitry.report.plots import require

        require()
    task = resolve_task(args.task)  # an unknown task or a bad task file fails before the model loads
    check_task_data(task, args.data)
    if not 0 <= args.margin < 1:
        raise UsageError(f"--margin must lie in [0, 1), got {args.margin}")
    if not 0 < args.target <= 1:
        raise UsageError(f"--target must lie in (0, 1], got {args.target}")
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    try:
        with Progress(SpinnerColumn(), TextColumn("[bold]discover[/] {task.description}"), TimeElapsedColumn(),
                      console=out.err, transient=True) as progress:
            bar = progress.add_task("loading", total=None)
            say = lambda message: progress.update(bar, description=message)  # noqa: E731
            how = None
            if attributed:
                from circuitry.attribution import DEFAULT_STEPS
                from circuitry.discovery.attributed import discover_attributed

                circuit, how = discover_attributed(model, task, args.method, args.steps or DEFAULT_STEPS,
                                                   data=args.data, target=args.target, margin=args.margin,
                                                   role_threshold=args.role_threshold, model_ref=args.model,
                                                   progress=say)
            else:
                circuit = discover(model, task, args.data, target=args.target, margin=args.margin,
                                   role_threshold=args.role_threshold, method=args.sweeps, model_ref=args.model,
                                   progress=say)
    except TaskNotDone as finding:
        return refuse(finding, args, out)
    if args.out:
        write_spec(circuit, args.out)
    if how is not None and args.plot:
        from circuitry.report.plots import faithfulness_curve_png

        faithfulness_curve_png(how.curve, args.plot, f"{args.model}: {how.method} on {circuit.task}")
    if args.json:
        doc = {**circuit.to_json(), "spec": args.out}
        if how is not None:
            doc["attribution"] = how.to_json()
        out.json(doc)
        return 0
    render(circuit, out, attributed=how is not None)
    if how is not None:
        render_curve(how, out)
        if args.plot:
            out.print(f"faithfulness curve: {args.plot}")
    if args.out:
        out.print(f"spec written to {args.out}  (check it: circuitry verify {args.out})")
    else:
        out.print("[dim]spec (write it with --out SPEC.yaml):[/]")
        out.print(circuit.spec_text, markup=False, highlight=False, soft_wrap=True)
    return 0


def render_curve(how, out) -> None:
    from rich.table import Table

    table = Table(title=f"faithfulness curve ({how.method}, {how.n_edges} edges scored)", title_justify="left")
    for col in ("top % of edges", "edges kept", "faithfulness"):
        table.add_column(col, justify="right")
    for p in how.curve.points:
        table.add_row(f"{p.percent:g}", str(p.n_edges), f"{p.faithfulness:.3f}")
    out.print(table)
    out.print(f"CPR (area under the curve, higher is better) {how.curve.cpr:.3f}; CMD (area of |1 - F|, lower is "
              f"better) {how.curve.cmd:.3f}")


def refuse(finding, args: argparse.Namespace, out) -> int:
    """The model does not do the task: say so with both numbers (stderr, or the --json document); no spec."""
    if args.json:
        out.json(finding.to_json())
    else:
        out.info(f"no circuit: {finding}")
    return finding.exit_code


def render(circuit, out, attributed: bool = False) -> None:
    from rich.table import Table

    def pct(x):
        return "—" if x is None or math.isnan(x) else f"{100 * x:.1f}%"

    nodes = Table(title=f"circuit of task {circuit.task!r} in {circuit.model}", title_justify="left")
    for col in ("node", "role", "previous_token", "induction", "effect"):
        nodes.add_column(col, justify="left" if col in ("node", "role") else "right")
    for n in circuit.nodes:
        nodes.add_row(n.name, n.role or "—", *(f"{n.scores[k]:.3f}" if k in n.scores else "—"
                                        for k in ("previous_token", "induction")), pct(n.effect))
    out.print(nodes)
    if circuit.edges:
        edges = Table(title="edges (composition: score / random baseline)", title_justify="left")
        for col in ("edge", "composition", "effect"):
            edges.add_column(col, justify="left" if col == "edge" else "right")
        for e in circuit.edges:
            edges.add_row(e.name, "—" if e.composition is None else f"{e.composition:.2f}x", pct(e.effect))
        out.print(edges)
    out.print("[dim]effect: share of the task effect lost when the node (edge) alone is removed from the "
              "circuit[/]")
    if circuit.whole_model:
        out.print("every component is needed: the circuit is the whole model, so nothing is ablated and it "
                  "recovers the metric by definition")
    corrupted = f"corrupted prompts {circuit.metric_corrupted:.4f}, " if circuit.task_file else ""
    removed = "all replaced by corrupted activations" if circuit.ablation == "corrupted" else "all ablated"
    out.print(f"{circuit.metric}: clean {circuit.metric_clean:.4f}, {corrupted}{removed} "
              f"{circuit.metric_ablated:.4f}, circuit {circuit.metric_circuit:.4f}; recovered "
              f"{circuit.recovered_nodes:.3f} (nodes), {circuit.recovered:.3f} (nodes and edges); target "
              f"{circuit.target:g}")
    if attributed:
        out.print(f"{circuit.prune_passes} circuit runs (the curve, the bisection and the effects); "
                  f"{circuit.total_passes} forward passes in all, {circuit.seconds:.2f} s")
    else:
        out.print(f"{len(circuit.rounds)} pruning rounds, {circuit.interventions} interventions in "
                  f"{circuit.prune_passes} forward passes ({circuit.method}); {circuit.total_passes} passes in "
                  f"all, {circuit.seconds:.2f} s")
