"""`flowers COMMAND ...`: each command lives in its own module with a main(argv)."""
import importlib
import os
import sys

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
    "automl": ("flowers.automl.run", "photos folder -> searched, fine-tuned, exported model"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: flowers COMMAND [ARGS...]\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:14} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up noise off the console
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
