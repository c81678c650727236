"""The method interface: what a dataset size recovery method is, and what it is given.

A **method** is any class with ``fit(train, sizes)`` and ``predict(test)``.  The protocol
runner (``lora_wise.protocol.run_protocol``) and ``lora_wise.evaluate`` / ``lora-wise evaluate``
run any such class, the built-in baselines (``lora_wise.baselines.BASELINES``) included, on the
standard split or the paper's ten draws.  Subclassing :class:`Method` is optional; it adds a
name and ``params()`` read from the constructor.

API card (as ``evaluate``'s metric modules have one):

``fit(train, sizes)``
    ``train`` is a :class:`ModelSet` of the training models, ``sizes`` a numpy array of their
    dataset sizes (the labels), in the order of ``train.model_ids``.  Returns ``self``.
``predict(test)``
    ``test`` is a :class:`ModelSet` of the models to predict; it carries **no labels**: no
    sizes attribute, opaque ids (``model-0000``, ``model-0001``, ... numbered in the order
    shown) instead of the models' ids (which name the size), the models in a shuffled order
    (the dataset is sorted by micro-dataset and size; the shuffle is seeded per draw, so it is
    the same on every run), and ``weights(i)`` without the LoRA file's metadata.  Returns one
    positive number per model, in the order of ``test.model_ids``: an array-like of
    ``len(test)`` finite numbers of images (a prediction counts as correct when it rounds to
    the true size).  The runner maps the predictions back to the real model ids, which the
    results record and a leaderboard submission carry.
``name`` (optional)
    How results records and the leaderboard name the method; default: the class name.
``params()`` (optional)
    The method's parameters as JSON (recorded with its results); :class:`Method` reads them
    from the constructor's arguments.

A :class:`ModelSet` is a list of LoRA models with their features computed once:

``len(models)``, ``models.model_ids``, ``models.layer_names``, ``models.rank``
    how many models, their ids (the training set's are the dataset's,
    ``<config>/<micro_dataset>/n<size>``; the test set's are opaque), the adapted layers in
    order, the LoRA rank.
``models.norms(matrix="BA")``
    (models x layers) Frobenius norms: ``norms()`` is ‖BA‖_F of every layer (scale included);
    ``"A"`` and ``"B"`` give the factors'.
``models.spectra(matrix="BA")``
    (models x layers x rank) singular values, descending, of ``"A"``, ``"B"`` or ``"BA"``.
``models.weights(i)``
    model ``i``'s LoRA weights, a :class:`lora_wise.lora.LoRAWeights` (layer -> A, B, scale),
    read from the dataset when asked for (a test model's with empty ``metadata``).

What this guards against: a method that uses a label by accident, through an id, the order or
an attribute of the test set.  It is no sandbox: the method runs in the runner's process, and
the test sizes are public in the dataset itself (and the test set's reader of weights must know
where each model's bytes lie), so code that goes looking for them finds them.

A small method, and what it returns (``ModelSet.from_arrays`` builds a set from arrays; the
protocol builds them from a dataset):

>>> import numpy as np
>>> from lora_wise.methods import Method, ModelSet
>>> class NearestNorm(Method):
...     '''The size of the training model whose mean ‖BA‖_F is nearest.'''
...     def fit(self, train, sizes):
...         self.norms_, self.sizes_ = train.norms().mean(axis=1), np.asarray(sizes)
...         return self
...     def predict(self, test):
...         distance = np.abs(test.norms().mean(axis=1)[:, None] - self.norms_[None, :])
...         return self.sizes_[distance.argmin(axis=1)]
>>> norms = np.array([[3.0, 3.2], [1.0, 1.1], [0.5, 0.4]])  # 3 models x 2 layers
>>> train = ModelSet.from_arrays(["m/a/n1", "m/a/n10", "m/a/n50"], norms=norms)
>>> test = ModelSet.from_arrays(["model-0000", "model-0001"], norms=np.array([[2.9, 3.0], [0.6, 0.5]]))
>>> NearestNorm().fit(train, [1, 10, 50]).predict(test)
array([ 1, 50])
>>> hasattr(test, "sizes") or hasattr(test, "dataset_sizes")   # a test set carries no labels
False
>>> NearestNorm().name, NearestNorm().params()
('NearestNorm', {})
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import MethodError
from .features import MATRICES, FeatureTable
from .lora import LoRAWeights


@runtime_checkable
class MethodLike(Protocol):
    """Anything with ``fit(train, sizes)`` and ``predict(test)`` is a method (see the module's docstring)."""

    def fit(self, train: "ModelSet", sizes: np.ndarray) -> Any: ...

    def predict(self, test: "ModelSet") -> Sequence[float]: ...


class Method:
    """Optional base class of a method: a ``name`` and ``params()`` from the constructor's arguments.

    Subclasses implement ``fit(train, sizes)`` and ``predict(test)`` (see the module's API card).
    ``params()`` returns each constructor argument read back from the attribute of the same name
    (scikit-learn's convention: store every argument under its own name).
    """

    #: How results records and the leaderboard name the method (default: the class name).
    name: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def params(self) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names if hasattr(self, name)}

    def fit(self, train: "ModelSet", sizes: np.ndarray) -> "Method":
        raise NotImplementedError(f"{type(self).__name__} must implement fit(train, sizes)")

    def predict(self, test: "ModelSet") -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement predict(test)")


class ModelSet:
    """LoRA models given to a method: ids, per-layer spectra and norms, and their weights on demand.

    It holds no sizes.  Built from a :class:`~lora_wise.features.FeatureTable` (:meth:`from_table`,
    which drops the table's sizes but keeps its ids: a training set) or from arrays
    (:meth:`from_arrays`); the protocol shows a method its test models through
    :func:`lora_wise.protocol.blind` (opaque ids, shuffled).
    """

    def __init__(self, model_ids: Sequence[str], layer_names: Sequence[str], spectra: dict[str, np.ndarray] | None,
                 norms: dict[str, np.ndarray], weights: Callable[[str], LoRAWeights] | None = None):
        self._model_ids = list(model_ids)
        self._layer_names = tuple(layer_names)
        self._spectra = spectra or {}
        self._norms = norms
        self._weights = weights

    @classmethod
    def from_table(cls, table: FeatureTable, weights: Callable[[str], LoRAWeights] | None = None) -> "ModelSet":
        """The models of a feature table without its sizes; ``weights`` reads a model's LoRA by id.

        The table's ids name the sizes (``<config>/<micro_dataset>/n<size>``) and its rows are
        sorted by them: this is a training set's view (or trusted code's), not a test set's.
        """
        return cls(table.model_ids, table.layer_names, table.sv, table.norms, weights)

    @classmethod
    def from_arrays(cls, model_ids: Sequence[str], norms: np.ndarray | None = None,
                    spectra: dict[str, np.ndarray] | None = None, layer_names: Sequence[str] | None = None,
                    weights: Callable[[str], LoRAWeights] | None = None) -> "ModelSet":
        """A set from arrays: ``norms`` (models x layers) of BA and/or ``spectra`` {matrix: models x layers x rank}.

        Norms not given are computed from the spectra (the Frobenius norm is the root of the
        sum of squared singular values).
        """
        spectra = {m: np.asarray(v) for m, v in (spectra or {}).items()}
        all_norms = {m: np.sqrt(np.square(v, dtype=np.float64).sum(axis=2)) for m, v in spectra.items()}
        if norms is not None:
            all_norms["BA"] = np.asarray(norms)
        if not all_norms:
            raise MethodError("a model set needs norms or spectra")
        layers = next(iter(all_norms.values())).shape[1]
        return cls(model_ids, layer_names or tuple(f"layer{i}" for i in range(layers)), spectra, all_norms, weights)

    def __len__(self) -> int:
        return len(self._model_ids)

    def __repr__(self) -> str:
        return f"ModelSet({len(self)} models, {len(self._layer_names)} layers, rank {self.rank})"

    @property
    def model_ids(self) -> list[str]:
        """The models' ids, in order (a copy)."""
        return list(self._model_ids)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The adapted layers, in the order of the layer axis of :meth:`norms` and :meth:`spectra`."""
        return self._layer_names

    @property
    def rank(self) -> int:
        """The LoRA rank: the length of the spectra (0 when the set holds norms only)."""
        return next(iter(self._spectra.values())).shape[2] if self._spectra else 0

    def _matrix(self, matrix: str, table: dict, what: str) -> np.ndarray:
        if matrix not in MATRICES:
            raise MethodError(f"unknown matrix {matrix!r}: choose from {', '.join(MATRICES)}")
        if matrix not in table:
            raise MethodError(f"this model set holds no {what} of {matrix}")
        return table[matrix]

    def norms(self, matrix: str = "BA") -> np.ndarray:
        """(models x layers) Frobenius norms of ``matrix`` ("BA" by default; "A", "B")."""
        return self._matrix(matrix, self._norms, "norms")

    def spectra(self, matrix: str = "BA") -> np.ndarray:
        """(models x layers x rank) singular values of ``matrix`` ("A", "B" or "BA"), descending, zero-padded."""
        return self._matrix(matrix, self._spectra, "spectra")

    def weights(self, i: int) -> LoRAWeights:
        """Model ``i``'s LoRA weights (layer -> A, B, scale), read from the dataset now."""
        if self._weights is None:
            raise MethodError("this model set was built without access to the weights; run the method through "
                              "lora_wise.evaluate (or run_protocol(..., weights=lora_wise.data.WeightsByModel(...)))")
        return self._weights(self._model_ids[i])

    def subset(self, rows: Sequence[int] | np.ndarray) -> "ModelSet":
        """The models at ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return ModelSet([self._model_ids[i] for i in rows], self._layer_names,
                        {m: v[rows] for m, v in self._spectra.items()}, {m: v[rows] for m, v in self._norms.items()},
                        self._weights)


def as_model_set(models: "ModelSet | FeatureTable") -> ModelSet:
    """A :class:`ModelSet` of ``models`` (a feature table's labels are dropped)."""
    return models if isinstance(models, ModelSet) else ModelSet.from_table(models)


# --------------------------------------------------------------------------- naming and loading methods

def method_name(method: Any) -> str:
    """The name a method is recorded under: its ``name`` attribute, else its class name."""
    cls = method if isinstance(method, type) else type(method)
    name = getattr(method, "name", None)
    return name if isinstance(name, str) and name else cls.__name__


def method_params(method: Any) -> dict:
    """A method instance's parameters (its ``params()``, if it has one; else none)."""
    params = getattr(method, "params", None)
    return dict(params()) if callable(params) else {}


def class_reference(cls: type) -> str:
    """``module:Class``, or ``file.py:Class`` for a class defined in a script or loaded from a file."""
    module = sys.modules.get(cls.__module__)
    where = getattr(module, "__file__", None)
    if cls.__module__ == "__main__" or cls.__module__.startswith(_FILE_MODULE_PREFIX):
        return f"{Path(where).name if where else 'script.py'}:{cls.__name__}"
    return f"{cls.__module__}:{cls.__name__}"


_FILE_MODULE_PREFIX = "lora_wise_method_file_"


def load_method(spec: str) -> type:
    """The class named by ``FILE.py:Class`` or ``module:Class``; a :class:`MethodError` saying what is wrong.

    A file is imported as a module of its own (its folder is not added to ``sys.path``).
    """
    where, colon, name = str(spec).rpartition(":")
    if not colon or not where or not name.isidentifier():
        raise MethodError(f"method {spec!r}: give FILE.py:Class or module:Class (e.g. my_method.py:MyMethod)")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise MethodError(f"method {spec!r}: no such file {where}")
        module_name = _FILE_MODULE_PREFIX + path.stem.replace("-", "_").replace(".", "_")
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look classes up here
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise MethodError(f"method {spec!r}: no module {exc.name!r} (is it installed, or on PYTHONPATH?)") from exc
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and v.__module__ == module.__name__ and _is_method_class(v))
        raise MethodError(f"method {spec!r}: {where} has no class {name!r}"
                          + (f"; its method classes: {', '.join(found)}" if found else ""))
    if not _is_method_class(cls):
        raise MethodError(f"method {spec!r}: {name} has no fit(train, sizes) and predict(test) methods")
    return cls


def _is_method_class(cls: type) -> bool:
    return callable(getattr(cls, "fit", None)) and callable(getattr(cls, "predict", None))


def check_predictions(predictions: Any, test: ModelSet, name: str) -> np.ndarray:
    """``predict``'s output as a float array of one finite positive number per test model, or a MethodError."""
    try:
        values = np.asarray(predictions, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise MethodError(f"{name}.predict returned {type(predictions).__name__}, not numbers: {exc}") from None
    if values.shape[0] != len(test):
        raise MethodError(f"{name}.predict returned {values.shape[0]} predictions for {len(test)} test models; "
                          f"return one per model, in the order of test.model_ids")
    bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
    if len(bad):
        raise MethodError(f"{name}.predict returned {values[bad[0]]!r} for {test.model_ids[bad[0]]}; "
                          f"a prediction is a finite positive number of images")
    return values

