"""Airflow hooks: ``TrainingHubHook`` (the registry, local runs, Job submission) and the Kubernetes Job client."""
