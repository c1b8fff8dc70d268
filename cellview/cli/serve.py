"""`cellview serve`: the viewer as a web page for a lab that shares one analysis machine."""

from __future__ import annotations

import argparse
import sys

from cellview.base.errors import CellviewError
from cellview.cli.options import add_precision_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the viewer as a web page (upload a slide, watch the heatmap, download)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). Any other address needs an "
                        "access token: --token, or one is generated and printed")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--token", help="access token every request must carry (default: none on localhost, a "
                                   "generated one on any other --host)")
    p.add_argument("--model", help="default model: a name (`cellview models` lists them) or a path "
                                   "(default: colon-he); the page offers every model the lookup finds")
    p.add_argument("--max-upload-mb", type=float, default=4096,
                   help="largest upload accepted, in MB (default 4096); larger ones are refused while streaming")
    p.add_argument("--keep-hours", type=float, default=24,
                   help="how long a finished job's slide and files stay for viewing and download (default 24)")
    p.add_argument("--max-queue", type=int, default=200,
                   help="jobs queued or running at once; more are refused with 503 until some finish (default 200)")
    p.add_argument("--cluster", metavar="local[:N]|ADDRESS",
                   help="run the jobs on Dask (as `cellview analyze --cluster`); a remote scheduler's workers must "
                        "see this server's upload folder (needs the 'cluster' extra)")
    p.add_argument("--scheduler-file", metavar="FILE", help="Dask scheduler file of a running cluster")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
                   help="where the model runs (as for `cellview analyze`)")
    add_precision_option(p)
    p.add_argument("--batch-size", type=int, default=32, help="tiles per model call (default 32)")
    p.add_argument("--workers", type=int, default=2, help="tile reader threads per job")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cellview.analysis.model_lookup import available_models, resolve_model
    from cellview.analysis.model_spec import ModelSpec
    from cellview.analysis.results import AnalysisParams
    from cellview.serve.app import ServeConfig
    from cellview.serve.jobs import RunSettings
    from cellview.serve.server import make_run_dir, serve, token_for

    if args.max_upload_mb <= 0 or args.keep_hours <= 0 or args.max_queue < 1:
        print("error: --max-upload-mb and --keep-hours must be positive, --max-queue at least 1", file=sys.stderr)
        return 2
    try:
        default_path = resolve_model(args.model)
        spec = ModelSpec.load(default_path)
    except CellviewError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    models = dict(available_models())
    default_name = spec.name if models.get(spec.name) == default_path else None
    if default_name is None:  # a model given by path, or one named differently from its folder
        default_name = next((n for n, p in models.items() if p.resolve() == default_path.resolve()), spec.name)
    models[default_name] = default_path
    token, generated = token_for(args.host, args.token)
    params = replace(AnalysisParams(), batch_size=args.batch_size, workers=args.workers, device=args.device,
                     precision=args.precision)
    config = ServeConfig(
        models=models, default_model=default_name, root=make_run_dir(), host=args.host, port=args.port, token=token,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)), keep_s=args.keep_hours * 3600, max_active=args.max_queue,
        params=params, run=RunSettings(args.device, args.batch_size, args.precision, not args.no_cache),
        cluster=args.cluster, scheduler_file=args.scheduler_file,
    )
    try:
        return serve(config, generated_token=generated)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
