"""`flowers COMMAND ...`: each command lives in its own module with a main(argv).

Logging is set up here, before any command imports TensorFlow: a command prints only its own
lines; `flowers --verbose COMMAND` (or FLOWERS_VERBOSE=1) shows every library's log too."""
import argparse
import contextlib
import gc
import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import warnings

from flowers import __version__

COMMANDS = {
    "data": ("flowers.data.cli", "import a folder tree to CSVs, check CSVs"),
    "backbone": ("flowers.core.backbones.classify", "list backbones, classify images with ImageNet heads"),
    "preprocess": ("flowers.preprocess.pipeline", "Beam: CSV -> embedding TFRecords"),
    "train": ("flowers.train.trainer", "train the head on embeddings and export a SavedModel"),
    "serve": ("flowers.serving.server", "local TF-Serving-compatible model server"),
    "predict": ("flowers.predict.cli", "send images to a model server (REST or gRPC)"),
    "batch-predict": ("flowers.predict.batch", "Beam: run the exported model over a CSV"),
    "deploy": ("flowers.deploy.publish", "copy a model to a serving base path as the next version"),
    "versions": ("flowers.deploy.versions", "list versions, set the default, roll back"),
    "console": ("flowers.console.app", "web console: try the model, its evaluation, the served versions"),
    "automl": ("flowers.automl.run", "photos folder -> searched, fine-tuned, exported model"),
}
# Beam commands end without interpreter teardown (freeing TensorFlow's and Beam's objects takes
# ~1 s): by the time they return, every file is written and closed and the summary printed.
EXIT_WITHOUT_TEARDOWN = ("preprocess", "batch-predict")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every command's --help: the module docstring as written, and every flag's default."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with every default in --help and usage errors as one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # a misspelt flag is an error, never a guess
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        # argparse lists no flag without help text, so a bare flag would hide its default.
        if "help" not in kwargs and kwargs.get("default") not in (None, False, argparse.SUPPRESS):
            kwargs["help"] = "default: %(default)s"
        return super().add_argument(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def alias(parser, flag, dest, **kwargs):
    """A hidden second spelling of a flag (e.g. --eval-fraction for --eval_fraction)."""
    parser.add_argument(flag, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def one_line(error):
    """An exception as one line naming the path involved (no traceback, no object reprs)."""
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or type(error).__name__}"
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def fail(prog, error, hint=None):
    """Print `PROG: error: ...[; HINT]` on stderr as one line; returns the exit status 2."""
    message = error if isinstance(error, str) else one_line(error)
    print(f"{prog}: error: {message}{'; ' + hint if hint else ''}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _stderr_to_file():
    """fd 2 into a temporary file for the duration; yields the file (to replay on failure)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """TensorFlow's C++ start-up lines (oneDNN, "could not find cuda drivers", written before
    absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot hide them) go to a temporary
    file while `import tensorflow` runs; they are shown if the import fails."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        with _stderr_to_file() as captured:
            try:
                importlib.import_module("tensorflow")
            except BaseException:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                raise
        return importlib.util.find_spec("tensorflow")  # already in sys.modules: a no-op load


def _not_from_beam(record):
    # e.g. "Resource module is not available..." on every RunInference model load; Beam's real
    # failures surface as exceptions.
    return not (record.name == "root" and f"{os.sep}apache_beam{os.sep}" in record.pathname)


def setup_logging(verbose=False):
    """Before TensorFlow, Beam or absl are imported: quiet unless verbose."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # also hides "failed call to cuInit" on CPU hosts
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # Beam logs its notes on the root logger
        handler.addFilter(_not_from_beam)
    for name in ("tensorflow", "absl", "apache_beam", "h5py", "kfp"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def usage():
    lines = ["usage: flowers [--version] [--verbose] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:14} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines + ["", "`flowers COMMAND --help` for each command's flags and defaults."])


def main(argv=None):
    in_process_of_its_own = argv is None  # the `flowers` command, not a caller in Python
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = os.environ.get("FLOWERS_VERBOSE", "") not in ("", "0")
    while argv and argv[0] in ("--verbose", "-v", "--version"):
        if argv.pop(0) == "--version":
            print(f"flowers {__version__}")
            return 0
        verbose = True
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"flowers: error: unknown command {argv[0]!r} (one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    setup_logging(verbose)
    # TensorFlow's and Beam's imports make millions of objects that live as long as the process:
    # collecting while they load finds nothing (0.7 s of a 4 s import), and once frozen no
    # collection re-walks them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        module = importlib.import_module(COMMANDS[argv[0]][0])
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    code = module.main(argv[1:]) or 0
    if in_process_of_its_own and argv[0] in EXIT_WITHOUT_TEARDOWN:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
