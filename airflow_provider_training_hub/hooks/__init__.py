"""The ``training_hub`` connection and its hook."""
