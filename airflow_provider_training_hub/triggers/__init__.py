"""Triggers: the deferrable watcher of a training Job."""
