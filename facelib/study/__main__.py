"""``python -m facelib.study build | serve | analyse``: the study kit from the command line.

    python -m facelib.study build --out build/study                 # every editor with shipped weights
    python -m facelib.study serve --study build/study --db answers.sqlite [--port 8866]
    python -m facelib.study analyse --study build/study --db answers.sqlite
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m facelib.study", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="edit held-out faces with the editors and write the trials")
    build.add_argument("--out", type=Path, required=True, help="the study folder to create")
    build.add_argument("--editors", default=None,
                       help="comma-separated editor names (default: every editor whose weights ship)")
    build.add_argument("--sources", type=int, default=12, help="held-out pairs to edit (default 12)")
    build.add_argument("--checks", type=int, default=6, help="attention-check trials (default 6)")
    build.add_argument("--side-by-side", type=int, default=None,
                       help="methods shown together in a which-more-real trial (default: all)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--overwrite", action="store_true", help="replace a study already in --out")
    serve = commands.add_parser("serve", help="serve the study page to people with Voila")
    serve.add_argument("--study", type=Path, required=True, help="a folder made by the build command")
    serve.add_argument("--db", type=Path, required=True, help="the SQLite file the answers go to")
    serve.add_argument("--port", type=int, default=8866)
    serve.add_argument("--ip", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    analyse = commands.add_parser("analyse", help="print the statistics of people's answers")
    analyse.add_argument("--study", type=Path, required=True)
    analyse.add_argument("--db", type=Path, required=True)
    analyse.add_argument("--simulated", action="store_true", help="analyse the simulated answers instead")
    return parser


def _default_editors() -> list[str]:
    from facelib import list_editors

    table = list_editors()
    return list(table.loc[table["weights_shipped"], "name"])


def _analyse(args) -> int:
    from . import StudyDB, agreement, filter_raters, load_study, real_or_fake_table, which_more_real_ranking

    if not args.db.is_file():
        raise ValueError(f"{args.db} does not exist: no answers yet")
    with StudyDB(args.db, load_study(args.study)) as db:
        answers = db.answers(simulated=args.simulated)
    label = "SIMULATED raters" if args.simulated else "people"
    if answers.empty:
        print(f"no answers from {label} in {args.db}")
        return 0
    kept, quality = filter_raters(answers)
    print(f"answers from {label}: {len(answers)} by {len(quality)} raters, {int(quality['kept'].sum())} kept")
    print(quality.to_string(index=False), real_or_fake_table(kept).to_string(index=False),
          which_more_real_ranking(kept).to_string(index=False), f"Fleiss' kappa: {agreement(kept)}", sep="\n\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from . import build_study, serve

    try:
        if args.command == "build":
            editors = args.editors.split(",") if args.editors else _default_editors()
            study = build_study(editors, args.out, sources=args.sources, checks=args.checks,
                                side_by_side=args.side_by_side, seed=args.seed,
                                overwrite=args.overwrite, progress=True)
            print(f"{len(study.trials)} trials of {', '.join(study.methods)} written to {args.out}")
            return 0
        if args.command == "serve":
            return serve(args.study, args.db, port=args.port, ip=args.ip)
        return _analyse(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"python -m facelib.study: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
