"""What instructlab-training's rank processes import first (see ``sitecustomize.py``): this folder is
put on their ``PYTHONPATH`` by the instructlab-training backend, never imported as a package."""
