"""Stage 2, Beam: CSV rows -> images -> backbone embeddings -> TFRecords (pipeline.py), with
RunInference through a small model handler (handler.py) and Beam/Dataflow options (options.py)."""
