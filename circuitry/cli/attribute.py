"""`circuitry attribute MODEL --task NAME|FILE`: a score for every node and edge of a task by attribution patching."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output

HELP = "attribution patching: score every node and edge for a task"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    from circuitry.attribution import DEFAULT_STEPS, LEVELS, METHODS

    p = sub.add_parser("attribute", help=HELP,
                       description="Score every edge of the residual graph (sender -> a head's Q, K or V input, an "
                                   "MLP's input, or the logits) and every node for the task's metric: eap (one "
                                   "clean, one corrupted and one backward pass), eap-ig (integrated gradients "
                                   "over input embeddings interpolated from corrupted to clean), eap-ig-act "
                                   "(over receiver inputs interpolated towards the corrupted run) or exact (one "
                                   "patch per edge). A positive score: the edge helps the metric, patching it "
                                   "from the corrupted run costs about that much.")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME, a path, hf:NAME ...")
    p.add_argument("--task", required=True, metavar="NAME|FILE",
                   help="a task file (kind: Task) or a task plugin (its data paired row by row with its reference "
                        "data, e.g. induction)")
    p.add_argument("--method", choices=METHODS, default="eap-ig", help="attribution method (default eap-ig)")
    p.add_argument("--level", choices=LEVELS, default="edges",
                   help="edges (every edge and node; default) or nodes (exact: nodes only)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help=f"integrated-gradient steps of eap-ig and eap-ig-act (default {DEFAULT_STEPS})")
    p.add_argument("--at", default=None, metavar="POSITIONS",
                   help="patch only at these positions of a task file (names or indices, comma-separated: S2,END)")
    p.add_argument("--metric", default=None, metavar="NAME", help="a metric plugin (default: the task's)")
    p.add_argument("--top", type=int, default=15, metavar="K", help="strongest edges and nodes listed (default 15)")
    p.add_argument("--per-position", action="store_true", help="also list node scores by position")
    p.add_argument("--json", action="store_true", help="print one JSON document (every score)")
    p.add_argument("--html", default=None, metavar="FILE.html",
                   help="also write the scores as heatmaps (head scores, head-to-head Q/K/V edges, by position)")
    p.add_argument("--graph", default=None, metavar="FILE",
                   help="also write the residual graph with the scores as attributes (.json, .graphml or .dot)")
    add_model_options(p)
    p.set_defaults(run=run)


def _positions(text: str | None, batch):
    from circuitry.errors import UsageError

    if text is None:
        return None
    items: list = [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UsageError("--at: give positions, e.g. S2,END or 3")
    if not hasattr(batch, "mask"):
        raise UsageError("--at needs a task file (named positions)")
    return batch.mask(items)


def run(args: argparse.Namespace, out) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitry.attribution import DEFAULT_STEPS, attribute
    from circuitry.discovery.attributed import task_batch
    from circuitry.errors import UsageError
    from circuitry.sources import load_model

    if args.graph:
        check_output(args.graph, "--graph", (".json", ".graphml", ".dot"))
    if args.html:
        check_output(args.html, "--html", (".html",))
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    if args.steps is not None and (args.steps < 1 or args.method in ("eap", "exact")):
        raise UsageError(f"--steps must be >= 1 and applies to eap-ig and eap-ig-act (got {args.steps} with "
                         f"--method {args.method})")
    if args.level == "nodes" and args.method != "exact":
        raise UsageError("--level nodes is for --method exact (the gradient methods score every edge and node "
                         "at once)")
    from circuitry.discovery import resolve_task

    resolve_task(args.task)  # an unknown task or a bad task file fails before the model loads
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    batch, task_name, metric = task_batch(model, args.task)
    at = _positions(args.at, batch)
    with Progress(TextColumn(f"[bold]attribute[/] {args.method}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=out.err,
                  transient=True) as progress:
        bar = progress.add_task("attribute", total=None)
        result = attribute(model, batch, args.metric or metric.name, args.method, args.level,
                           args.steps or DEFAULT_STEPS, at=at, per_position=args.per_position,
                           progress=lambda done, total: progress.update(bar, completed=done, total=total))
    if args.graph:
        from circuitry.graph import ResidualGraph

        graph = ResidualGraph(model)
        result.add_to_graph(graph)
        suffix = args.graph.rsplit(".", 1)[-1]
        {"json": graph.write_json, "graphml": graph.write_graphml, "dot": graph.write_dot}[suffix](args.graph)
        out.info(f"wrote {args.graph}")
    if args.html:
        from circuitry.figures import figures_for_attribution
        from circuitry.report.html import write_html

        write_html(figures_for_attribution(result, args.model, batch.description), args.html)
        out.info(f"wrote {args.html}")
    if args.json:
        from circuitry.jsonable import finite_tree

        doc = {"model": args.model, "task": task_name, "data": batch.description, "metric": result.metric,
               "method": result.method, "steps": result.steps, "metric_clean": result.clean,
               "metric_corrupted": result.corrupted, "forward_passes": result.n_passes,
               "seconds": round(result.seconds, 4), "nodes": finite_tree(result.node_dict()),
               "edges": finite_tree(result.edge_dict())}
        if args.per_position and result.node_positions is not None:
            doc["positions"] = list(result.positions)
            doc["node_positions"] = {n: finite_tree(row.tolist())
                                     for n, row in zip(result.layout.senders, result.node_positions)}
        out.json(doc)
        return 0
    _render(result, out, args, batch.description, task_name)
    return 0


def _render(result, out, args, data: str, task: str) -> None:
    from rich.table import Table

    steps = f", {result.steps} steps" if result.steps else ""
    out.print(f"{args.model} on {data}; metric {result.metric} (clean {result.clean:.4g}, corrupted "
              f"{result.corrupted:.4g}); {result.method}{steps}: {len(result.layout.edges)} edges, "
              f"{result.n_passes} forward passes, {result.seconds:.2f} s", soft_wrap=True)
    if result.edge_scores is not None:
        table = Table(title=f"strongest edges (of {len(result.layout.edges)})", title_justify="left")
        table.add_column("edge")
        table.add_column("score", justify="right")
        for edge, score in result.top_edges(args.top):
            table.add_row(str(edge), f"{score:+.4f}")
        out.print(table)
    table = Table(title="strongest nodes", title_justify="left")
    table.add_column("node")
    table.add_column("score", justify="right")
    for node, score in result.top_nodes(args.top):
        table.add_row(node, f"{score:+.4f}")
    out.print(table)
    if args.per_position and result.node_positions is not None:
        nodes = [n for n, _ in result.top_nodes(min(args.top, 8))]
        table = Table(title="scores of the strongest nodes by position", title_justify="left")
        table.add_column("pos")
        for node in nodes:
            table.add_column(node, justify="right")
        for i, p in enumerate(result.positions):
            table.add_row(p, *(f"{float(result.node_positions[result.layout.index[n], i]):+.3f}" for n in nodes))
        out.print(table)
    out.print("score: the metric's predicted loss when the edge (node) is patched from the corrupted run; "
              "positive: it helps")
