"""The training_hub registry: algorithms, their backends, and third-party plugins.

Three small pieces, as in training_hub: an ``Algorithm`` knows its parameter schema, a
``Backend`` knows how to run it, and ``AlgorithmRegistry`` maps names to both. Heavy imports
(torch, transformers, instructlab) live inside backends' ``execute`` only, so listing what is
available costs nothing and works on an Airflow scheduler without torch.

Third parties add algorithms or backends without editing this package by declaring an entry
point in the ``training_hub.plugins`` group. Its target is either a module (registering on
import, e.g. with the decorators below) or a callable taking ``AlgorithmRegistry``.
"""

from __future__ import annotations

import difflib
import logging
from abc import ABC
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any, ClassVar

from airflow_provider_training_hub.algorithms.memory import CannotEstimate, MemoryEstimate, MemoryLayout
from airflow_provider_training_hub.algorithms.params import ParamSchema, param_types
from airflow_provider_training_hub.algorithms.scratch import on_scratch
from airflow_provider_training_hub.algorithms.tracking import mlflow_run
from airflow_provider_training_hub.checkpoints import TrainingResult
from airflow_provider_training_hub.run_identity import claim

PLUGIN_GROUP = "training_hub.plugins"

log = logging.getLogger(__name__)


class Backend:
    """One way of running an algorithm (a library, a launcher, a device family).

    A backend overrides ``execute`` (it gets the validated schema instance) or, as training_hub's
    "extending" guide writes one, ``execute_training`` (it gets a dict of the parameters the
    caller gave, as training_hub passes only those); ``register_backend`` refuses a class with
    neither."""

    name: ClassVar[str]

    def check(self, params: Any) -> None:
        """Raise ``ValueError`` for what this backend cannot run here (no GPU, an option it lacks),
        before any work: ``Algorithm.train`` calls it before it touches ``ckpt_output_dir``."""

    @classmethod
    def memory_layout(cls, params: Any) -> MemoryLayout | None:
        """How this backend holds a run in GPU memory (``memory.py``), for the check that refuses a
        run that cannot fit before any GPU is held; None: it does not say, and its runs go unchecked."""
        return None

    def execute(self, params: Any) -> Any:
        """Run with already validated and checked parameters (an instance of the algorithm's schema)."""
        return self.execute_training(params.model_dump(exclude_unset=True))

    def execute_training(self, algorithm_params: dict[str, Any]) -> Any:
        """training_hub's entry point: the parameters the caller gave, by name."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither execute nor execute_training")


def _runs_something(backend_class: type) -> bool:
    return any(getattr(backend_class, method, None) is not getattr(Backend, method)
               for method in ("execute", "execute_training"))


class Algorithm(ABC):
    """A training method with one parameter schema, runnable on any registered backend."""

    name: ClassVar[str]
    params_schema: ClassVar[type[ParamSchema]]

    def __init__(self, backend: Backend, **config: Any) -> None:
        """``config``: parameters every ``train()`` of this instance starts from (training_hub keeps
        ``create_algorithm``'s keyword arguments as ``config`` too); checked now, so a misspelt name
        fails here instead of being dropped."""
        self.params_schema.check_some(config)
        self.backend = backend
        self.config = config

    def train(self, **kwargs: Any) -> Any:
        """Validate ``config`` updated with ``kwargs`` against the schema (a ``ValueError`` before
        any work), check the input paths where training runs, what the backend can run, and that
        ``ckpt_output_dir`` holds no other run's checkpoints, then run on ``self.backend``."""
        params = self.params_schema.parse({**self.config, **kwargs})
        params.check_local_paths()
        self.backend.check(params)
        with on_scratch(params) as (params, mirror):  # remote paths: trained on a local copy
            if params.RESULT_NEUTRAL is not None:  # before any expensive work: never resume another run
                (mirror.claim if mirror else claim)(self.name, params)
            with mlflow_run(params, self.name, getattr(self.backend, "name", type(self.backend).__name__)) as run:
                result = self.backend.execute(params)
            if mirror is not None and isinstance(result, TrainingResult):
                mirror.close()
                result = mirror.remote_result(result)
        # a training_hub-style backend returns what it likes (a dict); only ours carry the run's link
        if run and isinstance(result, TrainingResult):
            return replace(result, mlflow_run_id=run.run_id, mlflow_run_url=run.url)
        return result

    @classmethod
    def memory_estimate(cls, params: Any, backend: type[Backend]) -> MemoryEstimate:
        """GPU memory per device of this run on ``backend``, from the model's ``config.json``;
        ``CannotEstimate`` saying why where there is none."""
        raise CannotEstimate(f"the {cls.name!r} algorithm has no memory estimate")

    @classmethod
    def get_required_params(cls) -> dict[str, Any]:
        return param_types(cls.params_schema, required=True)

    @classmethod
    def get_optional_params(cls) -> dict[str, Any]:
        return param_types(cls.params_schema, required=False)


def _unknown(kind: str, name: str, available: list[str]) -> ValueError:
    hint = difflib.get_close_matches(name, available, n=1)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    return ValueError(f"Unknown {kind} {name!r}.{did_you_mean} Available: {', '.join(available) or 'none'}.")


class AlgorithmRegistry:
    """Name -> class maps for algorithms and, per algorithm, backends (first registered is default)."""

    _algorithms: ClassVar[dict[str, type[Algorithm]]] = {}
    _backends: ClassVar[dict[str, dict[str, type[Backend]]]] = {}
    _default_backend: ClassVar[dict[str, str]] = {}
    _aliases: ClassVar[dict[str, dict[str, tuple[str, str]]]] = {}
    _plugins_loaded: ClassVar[bool] = False

    @classmethod
    def register_algorithm(cls, name: str, algorithm_class: type[Algorithm]) -> None:
        cls._algorithms[name] = algorithm_class
        cls._backends.setdefault(name, {})

    @classmethod
    def register_backend(
        cls, algorithm_name: str, backend_name: str, backend_class: type[Backend], *, default: bool = False
    ) -> None:
        if not _runs_something(backend_class):
            raise TypeError(f"Backend {backend_name!r} ({backend_class.__name__}) must override execute(params) "
                            "or, as training_hub documents it, execute_training(algorithm_params).")
        backends = cls._backends.setdefault(algorithm_name, {})
        backends[backend_name] = backend_class
        if default or algorithm_name not in cls._default_backend:
            cls._default_backend[algorithm_name] = backend_name

    @classmethod
    def register_backend_alias(cls, algorithm_name: str, alias: str, backend_name: str, why: str) -> None:
        """Let training_hub's name for a backend this package does not ship run ``backend_name``,
        saying so (``why``) each time: a ported script keeps working and its log tells the truth."""
        cls._aliases.setdefault(algorithm_name, {})[alias] = (backend_name, why)

    @classmethod
    def load_plugins(cls, *, reload: bool = False) -> None:
        """Import every ``training_hub.plugins`` entry point once; a broken plugin is logged, not fatal."""
        if cls._plugins_loaded and not reload:
            return
        cls._plugins_loaded = True
        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                target = ep.load()
                if callable(target):
                    target(cls)
            except Exception:  # a third party's bug must not hide the built-in algorithms
                log.exception("training_hub plugin %r (%s) failed to load", ep.name, ep.value)

    @classmethod
    def list_algorithms(cls) -> list[str]:
        cls.load_plugins()
        return list(cls._algorithms)

    @classmethod
    def list_backends(cls, algorithm_name: str) -> list[str]:
        cls.get_algorithm(algorithm_name)
        return list(cls._backends[algorithm_name])

    @classmethod
    def default_backend(cls, algorithm_name: str) -> str:
        cls.get_algorithm(algorithm_name)
        try:
            return cls._default_backend[algorithm_name]
        except KeyError:
            raise ValueError(f"Algorithm {algorithm_name!r} has no backend registered.") from None

    @classmethod
    def get_algorithm(cls, name: str) -> type[Algorithm]:
        cls.load_plugins()
        if name not in cls._algorithms:
            raise _unknown("algorithm", name, list(cls._algorithms))
        return cls._algorithms[name]

    @classmethod
    def get_backend(cls, algorithm_name: str, backend_name: str) -> type[Backend]:
        cls.get_algorithm(algorithm_name)
        backends = cls._backends[algorithm_name]
        if backend_name not in backends and backend_name in cls._aliases.get(algorithm_name, {}):
            target, why = cls._aliases[algorithm_name][backend_name]
            log.warning("%s backend %r: running the %r backend instead (%s).", algorithm_name, backend_name, target, why)
            backend_name = target
        if backend_name not in backends:
            raise _unknown(f"backend for {algorithm_name!r}:", backend_name, list(backends))
        return backends[backend_name]


def register_algorithm(name: str):
    """Class decorator form of ``AlgorithmRegistry.register_algorithm``."""

    def wrap(algorithm_class: type[Algorithm]) -> type[Algorithm]:
        algorithm_class.name = name
        AlgorithmRegistry.register_algorithm(name, algorithm_class)
        return algorithm_class

    return wrap


def register_backend(algorithm_name: str, backend_name: str, *, default: bool = False):
    """Class decorator form of ``AlgorithmRegistry.register_backend``."""

    def wrap(backend_class: type[Backend]) -> type[Backend]:
        backend_class.name = backend_name
        AlgorithmRegistry.register_backend(algorithm_name, backend_name, backend_class, default=default)
        return backend_class

    return wrap


def create_algorithm(algorithm_name: str, backend_name: str | None = None, **kwargs: Any) -> Algorithm:
    """An algorithm instance bound to a backend (the algorithm's default when ``backend_name`` is None)."""
    algorithm_class = AlgorithmRegistry.get_algorithm(algorithm_name)
    backend_name = backend_name or AlgorithmRegistry.default_backend(algorithm_name)
    backend_class = AlgorithmRegistry.get_backend(algorithm_name, backend_name)
    return algorithm_class(backend=backend_class(), **kwargs)
