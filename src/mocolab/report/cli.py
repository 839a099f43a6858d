"""The `mocolab report` subcommand."""

from __future__ import annotations

from ..runtime import check_arguments, check_positive
from .build import Options, write_report


def cmd_report(args) -> int:
    check_arguments(args)  # --limit, --seed
    check_positive(args, ("queries", "neighbours", "map_points"))
    opts = Options(data=args.data, limit=args.limit, seed=args.seed, queries=args.queries, neighbours=args.neighbours,
                   map_points=args.map_points, device=args.device, preset=args.preset, features=not args.curves_only)
    index = write_report(args.runs, args.out, opts)
    print(f"report written: {index}")
    return 0


def add_command(sub) -> None:
    rp = sub.add_parser("report", help="a static HTML page of runs: curves, nearest neighbours, embedding map, tables")
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR",
                    help="run folders (pretrain, supervised, detect, segment; finished or not), "
                         "sweep or compare folders")
    rp.add_argument("--out", required=True, help="folder for index.html and its PNGs")
    rp.add_argument("--data", help="images for neighbours and the map (train/ + test/ or val/, or one folder; "
                                   "default: the data the run records)")
    rp.add_argument("--limit", type=int, default=0, help="first N images per split (class-balanced); 0 = all")
    rp.add_argument("--seed", type=int, default=0, help="which query images and map points are drawn")
    rp.add_argument("--queries", type=int, default=12, help="query images for the nearest neighbours")
    rp.add_argument("--neighbours", type=int, default=8, help="neighbours shown per query")
    rp.add_argument("--map-points", type=int, default=1000, help="images in the t-SNE map")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--preset", help="the preset to compare configs with (default: a sweep's, else the nearest)")
    rp.add_argument("--curves-only", action="store_true", help="curves and tables only (no features)")
    rp.set_defaults(fn=cmd_report)
