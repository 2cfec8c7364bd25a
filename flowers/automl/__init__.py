"""AutoML-lite: a folder of photos -> searched head -> fine-tuned backbone -> servable model."""
