"""Stage 1, the lab's inputs: `uri,label` CSVs and dict.txt (rows.py), made from a folder tree
(importer.py) and checked (check.py)."""
