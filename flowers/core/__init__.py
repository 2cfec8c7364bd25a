"""The shared core every stage uses: file access, the image function, the record schema,
TF Serving's model layout and config, the backbones, and the names defined once."""
