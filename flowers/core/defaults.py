"""Names and defaults defined once and imported everywhere (no TensorFlow import here, so the
pipeline compiler and light commands can use them)."""

MODEL_NAME = "flowers"  # the served model's name in models.config and the clients
BACKBONE = "efficientnet_lite2"

# The lab's head and training run (flowers train, the pipeline's train step).
HIDDEN_UNITS = 512
DROPOUT = 0.5
LEARNING_RATE = 0.001  # Adam
BATCH_SIZE = 100
MAX_STEPS = 1000
EVAL_EVERY = 100  # steps between evaluations, TensorBoard points and checkpoints

# Splitting a folder tree into train/eval CSVs (flowers data import, the pipeline's import step).
EVAL_FRACTION = 0.1
SPLIT_SEED = 0

# The deploy gate: the least eval accuracy a candidate needs (and no worse than stable).
ACCURACY_THRESHOLD = 0.9

# Files a training run writes beside its model, and copies into the export's assets.extra/.
METRICS_FILE = "metrics.json"
EVAL_PREDICTIONS_FILE = "eval_predictions.jsonl"
REPORT_FILE = "report.html"

# Version labels in models.config.
STABLE, PREVIOUS, CANARY = "stable", "previous", "canary"

# The export's second signature (TF Serving's Classify API): serialized tf.Examples whose
# IMAGE_FEATURE holds the image bytes -> [label, score] pairs.
CLASSIFY_SIGNATURE = "classify"
IMAGE_FEATURE = "image_bytes"
