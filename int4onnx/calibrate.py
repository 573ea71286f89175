"""Calibration: sample inputs for a model, and streaming statistics of the inputs of its MatMuls.

Feeds come from an ``.npz`` file (arrays keyed by input name: one feed), a directory of them (one
feed per file, in name order), or a text file cut into token windows for a causal LM. Every feed is
checked against the model's inputs (names, element types, ranks and fixed dimensions) and a mismatch
is a CalibrationError naming the file, the input and what was expected.

The model runs in ONNX Runtime with the activation inputs of the selected MatMuls added as graph
outputs; each feed's activations update an ActivationStats and are dropped, so memory is one feed's
activations plus the statistics: per input channel abs-max, min, max, sum |x|, sum x^2 (5 K floats),
a 2048-bin histogram of |x| (percentiles), and, when a method needs it, the K x K Gram matrix X^T X
(8 K^2 bytes, float64) for each distinct MatMul input (layers sharing an input, as Q/K/V or gate/up,
share one).

The Gram matrices of a whole model do not fit in memory at LLM size (a 7B Llama: 32 layers x
(3 x 4096^2 + 11008^2) float64 = 44 GB), so collect_statistics keeps them on disk (GramStore): each
feed's activation rows are appended to a file per input and folded into that input's Gram every
GRAM_FOLD_ROWS rows; a Gram is read back when a method asks for it, and only the last one read stays
in memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import shutil
import weakref
import zipfile
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from int4onnx._threads import blas_threads_for, cpu_threads
from int4onnx.errors import CalibrationError, OutputError, first_line
from int4onnx.lm import InputSpec, LMInterface, is_past_input

__all__ = ["ActivationStats", "FeedSource", "InputSpec", "ModelRunner", "check_feed", "collect_statistics",
           "model_inputs"]

logger = logging.getLogger(__name__)

HIST_BINS = 2048
# spilled activation rows of one input folded into its Gram at a time: each fold rewrites the Gram on
# disk, so folding the default calibration (32 x 512 tokens) once instead of every 4096 rows writes 2.4 GB
# less on SmolLM2-135M (at 5 s per GB on the 2-core test machine) for 4.8 GB more of spilled rows on disk
GRAM_FOLD_ROWS = 16384
# ... but never more than GRAM_PENDING_BYTES of pending rows per input, nor folds of fewer than
# GRAM_FOLD_MIN_ROWS rows: on a 7B model (K = 4096 / 11008) inputs fold every 4096 rows as before, so its
# spilled rows stay ~12 GB on disk instead of ~49 GB; on SmolLM2 the K = 576 inputs fold once, K = 1536 twice
GRAM_PENDING_BYTES = 64 << 20
GRAM_FOLD_MIN_ROWS = 4096
GRAM_PRODUCT_ROWS = 1024  # rows per product X^T X while folding
# Worker threads updating the statistics beside ONNX Runtime's run of the next sample. SmolLM2-135M on 2
# cores: one worker (1.8 s per sample: the Gram products and spilling the rows) left ONNX Runtime (0.8 s
# per sample) waiting on it
STATISTICS_WORKERS = 2


# -- statistics ----------------------------------------------------------------------------------------

class ActivationStats:
    """Streaming statistics of the rows of activations [..., K] (channels = last axis)."""

    def __init__(self, K: int, gram: bool = False, bins: int = HIST_BINS):
        self.K = K
        self.count = 0
        self.absmax = np.zeros(K)
        self.min = np.full(K, np.inf)
        self.max = np.full(K, -np.inf)
        self.sum_abs = np.zeros(K)
        self.sum_sq = np.zeros(K)
        self._gram = np.zeros((K, K)) if gram else None   # accumulated here by update()
        self._gram_source: Callable[[], np.ndarray] | None = None  # or read on demand (GramStore, scaled)
        self.store: GramStore | None = None  # where the Gram is kept, when it is on disk
        self.hist = np.zeros(bins, dtype=np.int64)
        self.hist_range = 0.0  # histogram of |x| over [0, hist_range), a power of two

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.K:
            raise CalibrationError(f"activation of shape {tuple(x.shape)} does not end in K={self.K}")
        # float32 (or the activation's own float type, if wider) for the elementwise work, float64 sums:
        # the same statistics as all-float64 (float32 values, their squares and power-of-two bin
        # scalings are exact in float64) at a third of the CPU time
        x = x.reshape(-1, self.K)
        x = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
        if x.shape[0] == 0:
            return
        if not np.isfinite(x).all():
            raise CalibrationError("the model produced NaN or infinity on the calibration data")
        a = np.abs(x)
        self.count += x.shape[0]
        self.absmax = np.maximum(self.absmax, a.max(axis=0))
        self.min = np.minimum(self.min, x.min(axis=0))
        self.max = np.maximum(self.max, x.max(axis=0))
        self.sum_abs += a.sum(axis=0, dtype=np.float64)
        self.sum_sq += np.square(x, dtype=np.float64).sum(axis=0)
        if self._gram is not None:
            x64 = x.astype(np.float64)
            with blas_threads_for(self.K):
                self._gram += x64.T @ x64
        self._hist(a.ravel())

    @property
    def gram(self) -> np.ndarray | None:
        """The K x K Gram matrix X^T X (float64), or None when it was not collected. Statistics from
        collect_statistics read it from their GramStore on each access: do not keep it longer than needed."""
        if self._gram_source is not None:
            return self._gram_source()
        return self._gram

    @gram.setter
    def gram(self, value: np.ndarray | None) -> None:
        self._gram, self._gram_source = value, None

    @property
    def has_gram(self) -> bool:
        """Whether the Gram matrix was collected (without reading it)."""
        return self._gram_source is not None or self._gram is not None

    def _hist(self, a: np.ndarray) -> None:
        top = float(a.max())
        bins = len(self.hist)
        if self.hist_range == 0.0:
            self.hist_range = 2.0 ** np.ceil(np.log2(top)) if top > 0 else 1.0
            if self.hist_range <= top:
                self.hist_range *= 2
        while top >= self.hist_range:  # double the range: merging bin pairs is exact
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(bins // 2, np.int64)])
            self.hist_range *= 2
        idx = np.minimum((a * (bins / self.hist_range)).astype(np.int64), bins - 1)
        self.hist += np.bincount(idx, minlength=bins)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.sum_abs / max(self.count, 1)

    @property
    def mean_sq(self) -> np.ndarray:
        return self.sum_sq / max(self.count, 1)

    def percentile(self, q: float) -> float:
        """Upper edge of the histogram bin holding the q-th percentile of |x| (0 < q <= 100); exact to
        one bin width, hist_range / 2048."""
        if self.hist_range == 0.0 or not self.hist.any():
            return 0.0
        cum = np.cumsum(self.hist)
        i = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
        return float((min(i, len(self.hist) - 1) + 1) * self.hist_range / len(self.hist))

    def scaled(self, d: np.ndarray) -> "ActivationStats":
        """Statistics of x * d (d [K] > 0 per channel): what a MatMul sees after an input scaling."""
        d = np.asarray(d, dtype=np.float64)
        out = ActivationStats(self.K, gram=False, bins=len(self.hist))
        out.count = self.count
        out.absmax, out.min, out.max = self.absmax * d, self.min * d, self.max * d
        out.sum_abs, out.sum_sq = self.sum_abs * d, self.sum_sq * d * d
        if self.has_gram:  # on demand too: one scaled Gram exists only while a method uses it
            def scaled_gram(base=self):
                g = base.gram * d[:, None]
                g *= d[None, :]
                return g
            out._gram_source = scaled_gram
            out.store = self.store
        out.hist, out.hist_range = np.zeros_like(self.hist), 0.0  # |x| histogram is not per channel
        return out

    def summary(self) -> dict:
        return {
            "samples": int(self.count),
            "absmax": float(self.absmax.max()) if self.count else 0.0,
            "p99.9": self.percentile(99.9),
            "rms": float(np.sqrt(self.mean_sq.mean())) if self.count else 0.0,
            # channels whose mean |x| exceeds 5x the median: what AWQ and clip search react to
            "outlier_channels": int(np.sum(self.mean_abs > 5 * max(np.median(self.mean_abs), 1e-12))),
        }


class GramStore:
    """Gram matrices X^T X of many MatMul inputs, kept on disk so that memory holds one at a time.

    append() writes a feed's activation rows (float32) to the input's file in a spill folder; every
    fold_at(input) rows, and when the Gram is asked for, the pending rows are folded into the input's
    Gram, stored as float64 .npy. gram() returns it and keeps only the most recently read one in
    memory. Memory: one Gram (8 K^2 bytes) plus GRAM_PRODUCT_ROWS x K rows while folding; disk:
    every Gram plus up to fold_at(input) x K float32 pending rows per input. The folder is removed by
    close() or when the store is garbage-collected."""

    def __init__(self, fold_rows: int | None = None):
        from int4onnx import io

        self.dir = io.make_temp_dir("gram")
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        self.fold_rows = fold_rows or GRAM_FOLD_ROWS
        self.index: dict[str, int] = {}
        self.K: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.folded: set[str] = set()
        self._last: tuple[str, np.ndarray] | None = None
        self.reads = 0  # Grams read from disk (tests)

    def fold_at(self, name: str) -> int:
        """Pending rows of `name` that trigger a fold: fold_rows, capped by GRAM_PENDING_BYTES of float32 rows
        (but at least GRAM_FOLD_MIN_ROWS)."""
        cap = max(GRAM_FOLD_MIN_ROWS, GRAM_PENDING_BYTES // (4 * self.K[name]))
        return min(self.fold_rows, cap)

    def _path(self, name: str, kind: str) -> pathlib.Path:
        return self.dir / f"{self.index[name]}.{kind}"

    def add(self, name: str, K: int) -> None:
        """Register an input (before appending to it from several threads: one file each)."""
        if name not in self.index:
            self.index[name], self.K[name], self.pending[name] = len(self.index), int(K), 0

    def append(self, name: str, x: np.ndarray) -> None:
        self.add(name, x.shape[-1])
        rows = np.ascontiguousarray(np.asarray(x).reshape(-1, self.K[name]), dtype=np.float32)
        try:
            with open(self._path(name, "rows"), "ab") as f:
                rows.tofile(f)
            self.pending[name] += rows.shape[0]
            if self.pending[name] >= self.fold_at(name):
                self._fold(name)
        except OSError as exc:  # e.g. a full disk
            raise OutputError(f"cannot keep the calibration Gram matrices in {self.dir}: "
                              f"{exc.strerror or exc}") from None

    def _fold(self, name: str) -> None:
        K, n = self.K[name], self.pending[name]
        rows_path, gram_path = self._path(name, "rows"), self._path(name, "npy")
        g = np.load(gram_path) if name in self.folded else np.zeros((K, K))
        if n:
            # float32 products of 1024 rows summed in float64: 2.2x less CPU than float64 products (41 ms
            # against 90 ms for 1024 x 1536 rows) at a relative difference of 1e-7; one BLAS thread
            # (faster on a loaded 2-core machine, measured: 0.63 s against 1.12 s for 4096 x 1536 rows)
            with open(rows_path, "rb") as f, blas_threads_for(K):
                for lo in range(0, n, GRAM_PRODUCT_ROWS):
                    x = np.fromfile(f, dtype=np.float32, count=min(GRAM_PRODUCT_ROWS, n - lo) * K)
                    x = x.reshape(-1, K)
                    g += x.T @ x
            os.truncate(rows_path, 0)
        np.save(gram_path, g)
        self.folded.add(name)
        self.pending[name] = 0

    def gram(self, name: str) -> np.ndarray:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        self._last = None  # drop the previous one before reading the next
        if self.pending[name] or name not in self.folded:
            self._fold(name)
        g = np.load(self._path(name, "npy"))
        self.reads += 1
        self._last = (name, g)
        return g

    def close(self) -> None:
        self._last = None
        self._cleanup()


# -- feeds --------------------------------------------------------------------------------------------

def model_inputs(model: ir.Model) -> list[InputSpec]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    out = []
    for v in model.graph.inputs:
        if v.const_value is not None or v.name in model.graph.initializers:
            continue
        dtype = v.dtype.numpy() if v.dtype is not None else None
        shape = () if v.shape is None else tuple(d if isinstance(d, int) else None for d in v.shape)
        out.append(InputSpec(v.name, np.dtype(dtype) if dtype is not None else None, shape, v.shape is not None))
    return out


def check_feed(feed: dict, inputs: list[InputSpec], where: str) -> dict:
    """Raise CalibrationError unless `feed` has exactly the model's inputs with matching types and shapes."""
    names = [i.name for i in inputs]
    unknown = [k for k in feed if k not in names]
    if unknown:
        raise CalibrationError(f"{where}: '{unknown[0]}' is not an input of the model (its inputs: {', '.join(names)})")
    missing = [n for n in names if n not in feed]
    if missing:
        raise CalibrationError(f"{where}: no array for model input '{missing[0]}' (expected {', '.join(names)})")
    for spec in inputs:
        x = feed[spec.name]
        if spec.dtype is not None and x.dtype != spec.dtype:
            raise CalibrationError(f"{where}: input '{spec.name}' is {x.dtype.name}, the model expects "
                                   f"{spec.describe()}")
        if spec.rank_known:
            bad = x.ndim != len(spec.shape) or any(d is not None and d != n for d, n in zip(spec.shape, x.shape, strict=False))
            if bad:
                raise CalibrationError(f"{where}: input '{spec.name}' has shape {list(x.shape)}, the model expects "
                                       f"{spec.describe()}")
        if x.size == 0 and not (is_past_input(spec.name) and x.ndim == 4 and x.shape[2] == 0 and all(x.shape[i] for i in (0, 1, 3))):
            raise CalibrationError(f"{where}: input '{spec.name}' is empty (shape {list(x.shape)})")
    return feed


def _npz_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The .npz files of a calibration folder, in the order they are read."""
    return sorted(f for f in folder.iterdir() if f.suffix == ".npz" and f.is_file())


def _read_npz(path: pathlib.Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            feed = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"{path}: cannot read it as .npz ({type(exc).__name__}: {exc})") from None
    if not feed:
        raise CalibrationError(f"{path}: the .npz holds no arrays")
    return feed


@dataclasses.dataclass
class FeedSource:
    """Where calibration (or evaluation) feeds come from; one of `path` or `text`+`tokenizer`."""

    path: str | None = None
    text: str | None = None
    tokenizer: str | None = None
    samples: int = 32
    sequence_length: int | None = None  # text: tokens per window (None: 512, or the model's context when shorter)
    skip_chars: int = 0  # text: start reading after this many characters
    max_chars: int | None = None  # text: read at most this many characters

    def describe(self) -> str:
        if self.path:
            return str(self.path)
        return f"{self.samples} x {self.sequence_length or 'up to 512'} tokens of {self.text}"

    def files_read(self) -> list[tuple[str, pathlib.Path]]:
        """(what, path) of every file these feeds read, for io.check_overwrites."""
        files = []
        if self.path is not None:
            p = pathlib.Path(self.path)
            files += [("the calibration file", f) for f in (_npz_files(p) if p.is_dir() else [p])]
        if self.text is not None:
            files.append(("the calibration text", pathlib.Path(self.text)))
        if self.tokenizer is not None:
            files.append(("the tokenizer", pathlib.Path(self.tokenizer)))
        return files

    def feeds(self, inputs: list[InputSpec], lm: LMInterface | None = None) -> list[dict]:
        """All feeds, checked against the model's inputs (calibration sets are small). Text windows are
        fed through `lm` (the model's LM interface; read from `inputs` when not given), with an empty
        past for KV-cache models (`LMInterface.settle_feeds` masks it where the graph refuses that)."""
        out = list(self._iter(inputs, lm))
        if not out:
            raise CalibrationError(f"{self.describe()}: no calibration samples")
        return out

    def _iter(self, inputs, lm) -> Iterator[dict]:
        if self.path is not None:
            p = pathlib.Path(self.path)
            if p.is_dir():
                files = _npz_files(p)
                if not files:
                    raise CalibrationError(f"{p}: the directory holds no .npz files")
                for f in files[: self.samples] if self.samples else files:
                    yield check_feed(_read_npz(f), inputs, str(f))
            elif p.is_file():
                yield check_feed(_read_npz(p), inputs, str(p))
            else:
                raise CalibrationError(f"{p}: no such file or directory")
            return
        yield from self._text_feeds(inputs, lm or LMInterface.describe(inputs, where=self.text))

    def tokens(self) -> list[int]:
        from int4onnx.runtime import Tokenizer

        if not self.tokenizer:
            raise CalibrationError("text calibration needs --tokenizer (a tokenizer.json or sentencepiece .model)")
        p = pathlib.Path(self.text)
        if not p.is_file():
            raise CalibrationError(f"{p}: no such file")
        try:
            text = p.read_text(encoding="utf-8")[self.skip_chars:]
            if self.max_chars:
                text = text[:self.max_chars]
        except UnicodeDecodeError as exc:
            raise CalibrationError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not text.strip():
            raise CalibrationError(f"{p}: no text" + (f" after the first {self.skip_chars} characters"
                                                     if self.skip_chars else ""))
        return Tokenizer(self.tokenizer).encode_document(text)

    def _text_feeds(self, inputs, lm: LMInterface) -> Iterator[dict]:
        if (self.sequence_length is not None and self.sequence_length < 1) or self.samples < 1:
            raise CalibrationError("--calibration-samples and --sequence-length must be at least 1")
        lm.require("give --calibration .npz feeds", CalibrationError)
        L = lm.window_length(self.sequence_length, "--sequence-length")
        self.sequence_length = L
        ids = self.tokens()
        lm.check_tokens(ids, self.tokenizer)
        n = min(self.samples, len(ids) // L)
        if n == 0:
            raise CalibrationError(f"{self.text}: {len(ids)} tokens, fewer than one sample of --sequence-length {L}")
        if n < self.samples:
            logger.warning("calibration text gives %d samples of %d tokens (asked for %d)", n, L, self.samples)
        for i in range(n):
            window = np.array(ids[i * L:(i + 1) * L], dtype=np.int64)[None, :]
            yield check_feed(lm.window_feed(window), inputs, self.text)


# -- running the model ---------------------------------------------------------------------------------

class ModelRunner:
    """An ONNX Runtime session of an in-memory ir.Model with extra values exposed as outputs.

    The model is serialised once (to a temporary directory with external data when it is large or
    has external data);
    the ir.Model is left as it was. ``overridable`` names initializers that may be replaced per run
    by feeding arrays under their names (they become graph inputs too). ``only_extra``: the session's
    outputs are the extra values alone (ONNX Runtime then drops what only the model's outputs need,
    e.g. an LM's lm_head and its [tokens, vocab] logits)."""

    def __init__(self, model: ir.Model, extra: Iterable[ir.Value] = (), overridable: Iterable[str] = (),
                 threads: int | None = None, dtypes: dict[str, ir.DataType] | None = None,
                 only_extra: bool = False):
        import onnx

        from int4onnx import io
        from int4onnx.runtime import make_session

        graph = model.graph
        inputs = {v.name for v in graph.inputs}
        kept = list(graph.outputs)  # the model's outputs, restored after serialising
        self.model_outputs = [o.name for o in kept]
        self.fed = {}   # requested value name -> graph input name (activation that is a model input)
        typed = []
        self.extra_names: list[str] = []
        for v in extra:
            if v.name in self.fed or v.name in self.extra_names:
                continue
            if v.name in inputs:
                self.fed[v.name] = v.name
                continue
            if v.type is None:  # an output needs a type; the caller knows the MatMul's (float or float16)
                typed.append(v)
                v.type = ir.TensorType((dtypes or {}).get(v.name) or ir.DataType.FLOAT)
            if not v.is_graph_output():
                graph.outputs.append(v)
            self.extra_names.append(v.name)
        if only_extra and self.extra_names:
            for o in kept:
                if o.name not in self.extra_names:
                    graph.outputs.remove(o)
        self.tmp = None
        try:
            # ONNX Runtime cannot resolve external data of a model given as bytes: a model whose weights
            # live in external files goes through a temporary directory too, with its own data file
            large = io.initializer_bytes(model) > io.EXTERNAL_DATA_THRESHOLD
            if large or next(io.external_tensors(model), None) is not None:
                self.tmp = io.make_temp_dir("calib")  # next to the output, where stale ones are cleaned
                path = os.path.join(self.tmp, "model.onnx")
                ir.save(model, path, external_data="model.onnx.data")
                proto = onnx.load(path, load_external_data=False)
            else:
                proto = ir.serde.serialize_model(model)
        finally:
            graph.outputs.clear()
            graph.outputs.extend(kept)
            for v in typed:
                v.type = None
        over = set(overridable)
        if over:
            have = {i.name for i in proto.graph.input}
            for init in proto.graph.initializer:
                if init.name in over and init.name not in have:
                    proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        if self.tmp is not None:
            path = os.path.join(self.tmp, "model.onnx")
            onnx.save(proto, path)
            self.session = make_session(path, threads=threads)
        else:
            self.session = make_session(proto.SerializeToString(), threads=threads)

    def run(self, feed: dict, names: list[str]) -> list[np.ndarray]:
        want = [n for n in names if n not in self.fed]
        got = dict(zip(want, self.session.run(want, feed), strict=True)) if want else {}
        return [feed[self.fed[n]] if n in self.fed else got[n] for n in names]

    def close(self) -> None:
        self.session = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def collect_statistics(model: ir.Model, values: list[ir.Value], feeds: list[dict], gram: bool,
                       progress: Callable[[int, int, str], None] | None = None,
                       dtypes: dict[str, ir.DataType] | None = None,
                       lm: LMInterface | None = None) -> dict[str, ActivationStats]:
    """Statistics of each value (an activation [..., K]) over the feeds, keyed by value name.
    gram: also the Gram matrices, kept in a GramStore (on disk; `stats[name].gram` reads one back).
    dtypes: element type of values whose type the graph does not record (default float32).
    lm: the model's LM interface; feeds with an empty KV past are replaced in the list by masked ones
    when the graph refuses a 0-length past."""
    uniq: dict[str, ir.Value] = {}
    for v in values:
        uniq.setdefault(v.name, v)
    runner = ModelRunner(model, uniq.values(), dtypes=dtypes, only_extra=True)
    stats: dict[str, ActivationStats] = {}
    names = list(uniq)
    store = GramStore() if gram else None

    def start(outs: list[np.ndarray]) -> list[list[int]]:
        """On the first sample: every input's statistics (and Gram file), and the inputs shared out between
        the workers by their estimated cost, largest first to the least loaded."""
        parts: list[list[int]] = [[] for _ in range(workers)]
        load = [0] * workers
        for i, name in enumerate(names):
            K = int(outs[i].shape[-1])
            stats[name] = ActivationStats(K)
            if store is not None:
                store.add(name, K)
                stats[name]._gram_source = functools.partial(store.gram, name)
                stats[name].store = store
        for i in sorted(range(len(names)), key=lambda i: -stats[names[i]].K):
            j = load.index(min(load))
            parts[j].append(i)
            load[j] += _update_cost(stats[names[i]].K, store is not None)
        return [sorted(p) for p in parts if p]

    def update(outs: list[np.ndarray], part: list[int]) -> None:
        for i in part:
            name = names[i]
            x, outs[i] = outs[i], None  # each activation freed once used: the next run's outputs fill in
            stats[name].update(x)
            if store is not None:
                store.append(name, x)

    # With more than one CPU, STATISTICS_WORKERS worker threads update the statistics of sample i (numpy
    # and BLAS release the GIL; each worker its share of the inputs) while ONNX Runtime runs sample i + 1:
    # two samples' activations in memory instead of one
    workers = min(STATISTICS_WORKERS, cpu_threads()) if cpu_threads() > 1 and len(feeds) > 1 else 1
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None
    pending: list[concurrent.futures.Future] = []
    parts: list[list[int]] | None = None
    try:
        if lm is not None:
            lm.settle_feeds(runner.session, feeds)
        # one BLAS thread in the workers' products, entered once here: the workers' own limits then nest
        # inside it and restore one thread, whichever order they end in
        with blas_threads_for(0) if pool is not None else contextlib.nullcontext():
            for i, feed in enumerate(feeds):
                if progress:
                    progress(i, len(feeds), "calibrating")
                try:
                    outs = runner.run(feed, names)
                except Exception as exc:  # ONNX Runtime rejects the feed (e.g. a dimension the graph needs)
                    first = first_line(exc)
                    raise CalibrationError(f"calibration sample {i}: ONNX Runtime cannot run the model on it: "
                                           f"{first}") from exc
                if parts is None:
                    parts = start(outs)
                for job in pending:
                    job.result()  # the previous sample's statistics (and any error they raised)
                if pool is None:
                    update(outs, list(range(len(names))))
                else:
                    pending = [pool.submit(update, outs, part) for part in parts]
                del outs
            for job in pending:
                job.result()
        if progress:
            progress(len(feeds), len(feeds), "calibrating")
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # the worker stops appending before the store goes
        if store is not None:
            store.close()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        runner.close()
    return stats


def _update_cost(K: int, gram: bool) -> int:
    """Relative cost per activation row of an input of width K in the workers: about 1700 K for the
    elementwise statistics and spilling the row, K^2 for its Gram product (measured on SmolLM2's
    576 and 1536)."""
    return K * (1700 + (K if gram else 0))


def release(stats: dict[str, ActivationStats]) -> None:
    """Remove the spilled Gram matrices of these statistics (they cannot be read afterwards)."""
    for st in stats.values():
        if st.store is not None:
            st.store.close()
