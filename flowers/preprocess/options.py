"""`flowers preprocess` flags: ours, and every real Beam option passed straight to Beam
(DirectRunner's FnApiRunner here, Dataflow with --cloud). A flag that is neither is an error:
`beam_options` is shared with `flowers batch-predict`."""
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, _BeamArgumentParser

from flowers import cli
from flowers.core import backbones, containers, images

BATCH_SIZE = 32  # RunInference batch size (min = max: BatchElements would otherwise resize by timing)
# Local runs: the DirectRunner's batch engine, named directly. Beam 2.77's DirectRunner first
# tries Prism, downloading its binary from GitHub: on a network that drops the connection that
# hangs forever. FnApiRunner is what the DirectRunner falls back to anyway (the Beam team's own
# advice in apache/beam#34612). One in-process worker: TensorFlow already spreads each batch
# over every core, and extra worker threads (--direct_num_workers=0
# --direct_running_mode=multi_threading) cost more CPU per image for no gain on 2 cores (measured).
LOCAL_DEFAULTS = ["--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
BEAM_EPILOG = ("Beam pipeline options pass through to Beam (e.g. --runner, --direct_num_workers, "
               "--max_num_workers, --machine_type); any other flag is an error.")


def parse_args(argv, description=__doc__):
    parser = cli.ArgumentParser(prog="flowers preprocess", description=description, epilog=BEAM_EPILOG)
    parser.add_argument("--input_path", required=True, help="CSV(s) of uri,label[,label...]; comma-separated")
    parser.add_argument("--input_dict", required=True, help="dict.txt: one label per line")
    parser.add_argument("--output_path", required=True,
                        help="output prefix(es), one per --input_path, comma-separated")
    parser.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=list(backbones.BACKBONES))
    parser.add_argument("--max_pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                        help="reject images with more pixels than this (decompression bombs)")
    parser.add_argument("--min_batch_size", type=int, default=BATCH_SIZE,
                        help="RunInference batch size bounds")
    parser.add_argument("--max_batch_size", type=int, default=BATCH_SIZE)
    add_cloud_arg(parser)
    args, pipeline_args = parser.parse_known_args(argv)
    args.inputs = [s.strip() for s in args.input_path.split(",") if s.strip()]
    args.outputs = [s.strip() for s in args.output_path.split(",") if s.strip()]
    if len(args.inputs) != len(args.outputs):
        parser.error(f"--input_path has {len(args.inputs)} value(s), --output_path {len(args.outputs)}")
    if len(set(args.outputs)) != len(args.outputs):
        parser.error("--output_path values must differ")
    if args.min_batch_size > args.max_batch_size:
        parser.error("--min_batch_size is larger than --max_batch_size")
    args.options = beam_options(parser, args.cloud, pipeline_args)
    return args


def add_cloud_arg(parser):
    parser.add_argument("--cloud", action="store_true",
                        help="run on Dataflow (needs --project, --region, --temp_location) in the preprocess "
                             "image: $FLOWERS_IMAGE_REPO/preprocess:$FLOWERS_IMAGE_TAG, the repo "
                             "defaulting to REGION-docker.pkg.dev/PROJECT/flowers, or --sdk_container_image")


def unknown_flags(pipeline_args):
    """The flags in pipeline_args that no Beam PipelineOptions class defines (as Beam's own
    get_all_options parses them, which only warns about these)."""
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    _, unknown = parser.parse_known_args(pipeline_args)
    return unknown


def _has(flags, name):
    return any(f == name or f.startswith(name + "=") for f in flags)



def beam_options(parser, cloud, pipeline_args):
    """PipelineOptions from what our parser left: local defaults, or Dataflow with --cloud.
    Anything that is not a Beam option is a usage error (one line)."""
    unknown = unknown_flags(pipeline_args)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (neither a flag of this command nor a "
                     "Beam pipeline option)")
    if cloud:
        if _has(pipeline_args, "--runner"):
            parser.error("--cloud means --runner=DataflowRunner; give one or the other")
        options = PipelineOptions(pipeline_args)
        gcp = options.view_as(GoogleCloudOptions)
        missing = [f"--{n}" for n in ("project", "region", "temp_location") if not getattr(gcp, n)]
        if missing:
            parser.error(f"--cloud needs {', '.join(missing)}")
        image = containers.image("preprocess", project=gcp.project, region=gcp.region)
        defaults = ["--runner=DataflowRunner", "--sdk_location=container",  # the SDK is in the image
                    "--sdk_container_image=" + image]
        return PipelineOptions(defaults + pipeline_args)  # later flags win: the user's
    if _has(pipeline_args, "--runner"):
        return PipelineOptions(pipeline_args)
    return PipelineOptions(LOCAL_DEFAULTS + pipeline_args)
