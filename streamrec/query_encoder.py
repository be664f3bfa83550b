"""Search queries → unit vectors for serving, in the items' vector space, fast.

Why a second runtime: a query is a few tokens, and at that size PyTorch's eager per-operator
overhead is most of the work (all-MiniLM-L6-v2: ~10 ms a query on one thread here). The same
weights exported to ONNX Runtime give the same vectors in a third of that, and with dynamically
quantised int8 weights (per channel) in a tenth, at a cosine of ~0.99 to the fp32 vector
(README: benchmarks, with the search nDCG@10 it keeps). Items stay embedded by the index
updater's encoder (``streamrec.encoder``); only the query side changes, so the index is untouched.

The ONNX file is built from the local weights (nothing is downloaded) the first time serving
starts with a given model, runtime and library versions, and kept in ``encoder.onnx_dir``
(default ``~/.cache/streamrec/encoders``); later starts and every serving worker load it in well
under a second.

>>> from streamrec.settings import Settings
>>> q = QueryEncoder.from_settings(Settings(encoder={"query_runtime": "torch"}))
>>> v = q.encode_query("cordless drill")
>>> v.shape, v.flags.writeable, q.encode_query("cordless drill") is v
((384,), False, True)
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from cachetools import LRUCache

from streamrec.encoder import Encoder, bundled_model_dir, model_id_for
from streamrec.settings import Settings

log = logging.getLogger(__name__)

QueryRuntime = Literal["torch", "onnx", "onnx-int8"]
QUERY_MAX_TOKENS = 64  # a search query longer than this is cut: it is text pasted into the box, not a query


class QueryEncoder:
    """``encode_query(text)``: a read-only unit vector, with an LRU of recent queries (pagination
    and popular searches skip the model). Thread-safe."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], model_id: str, dim: int, cache_size: int = 4096):
        self._embed = embed
        self.model_id = model_id  # the items' model, then how queries are run
        self.dim = dim
        self._cache: LRUCache[str, np.ndarray] | None = LRUCache(cache_size) if cache_size > 0 else None
        self._cache_lock = threading.Lock()  # cachetools caches are not thread-safe; a lookup reorders

    @classmethod
    def from_settings(cls, s: Settings) -> QueryEncoder:
        """The runtime of ``encoder.query_runtime``; ONNX only where the items' encoder is fp32 on CPU
        (an int8 or GPU item encoder is queried with itself)."""
        embed, model_id, dim = embedder(s)
        return cls(embed, model_id, dim, s.encoder.query_cache)

    def swap(self, embed: Callable[[list[str]], np.ndarray], model_id: str) -> None:
        """Serve queries with another model from now on (a fine-tuned query side: serving/query_versions.py);
        the cached vectors of the previous one are dropped with it."""
        with self._cache_lock:
            self._embed, self.model_id = embed, model_id
            if self._cache is not None:
                self._cache.clear()

    def encode_query(self, text: str) -> np.ndarray:
        """(dim,) read-only vector. The model runs outside the cache lock, so a miss never holds up
        other queries' hits."""
        if self._cache is None:
            return _read_only(self._embed([text])[0])
        with self._cache_lock:
            hit = self._cache.get(text)
            embed = self._embed
        if hit is not None:
            return hit
        vec = _read_only(embed([text])[0])
        with self._cache_lock:
            if embed is not self._embed:  # swapped meanwhile: this vector is the old model's
                return vec
            return self._cache.setdefault(text, vec)  # two threads that missed together share the first


def embedder(
    s: Settings, model_dir: Path | None = None, onnx_dir: Path | None = None, version: str = ""
) -> tuple[Callable[[list[str]], np.ndarray], str, int]:
    """(embed, model id, dim) of ``model_dir`` (default: the items' encoder) in the runtime the
    settings choose; ONNX builds go to ``onnx_dir`` (default ``encoder.onnx_dir``)."""
    runtime = s.encoder.query_runtime
    onnx_applies = s.encoder.precision == "fp32" and s.encoder.device != "cuda"
    if runtime != "torch" and s.encoder.device == "auto":
        import torch

        onnx_applies = onnx_applies and not torch.cuda.is_available()
    suffix = f"+{version}" if version else ""
    if runtime == "torch" or not onnx_applies:
        encoder = Encoder(
            model_dir or s.encoder.model_dir,
            device=s.encoder.device,
            precision=s.encoder.precision,
            batch_size=s.encoder.batch_size,
        )
        return encoder.encode, encoder.model_id + suffix, encoder.dim
    model_dir = model_dir or (Path(s.encoder.model_dir) if s.encoder.model_dir else bundled_model_dir())
    built = build_onnx(model_dir, onnx_dir or s.encoder.onnx_dir or default_onnx_dir(), int8=runtime == "onnx-int8")
    onnx = OnnxEmbedder(built, model_dir)
    return onnx.encode, f"{model_id_for(s)}+{runtime}{suffix}", onnx.dim


def default_onnx_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamrec" / "encoders"


class OnnxEmbedder:
    """Mean-pooled, L2-normalised sentence vectors from an exported model (``build_onnx``)."""

    def __init__(self, path: Path, model_dir: Path, max_length: int = QUERY_MAX_TOKENS):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one query at a time: a parallel region only waits for a core
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.max_length = max_length
        self._lock = threading.Lock()  # fast tokenizers are not safe to share across threads

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            tokens = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
            )
        feed = {name: tokens[name].astype(np.int64) for name in self.inputs}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


def _pooled(model, input_names: list[str]):
    """The HF model with the sentence-transformers pooling (``streamrec.encoder``) inside the graph."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            named = dict(zip(input_names, inputs, strict=True))
            hidden = self.model(**named).last_hidden_state
            mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return Pooled().eval()


def build_onnx(model_dir: Path, cache_dir: Path, *, int8: bool) -> Path:
    """The ONNX file of ``model_dir`` (quantised when ``int8``), exported once and kept in
    ``cache_dir`` under a name that changes with the weights and the library versions."""
    import onnxruntime
    import torch

    digest = hashlib.blake2b(digest_size=8)
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(str(f.stat().st_size).encode())
    digest.update(f"{torch.__version__}/{onnxruntime.__version__}".encode())
    name = f"{model_dir.resolve().name}-{digest.hexdigest()}"
    fp32, quantised = cache_dir / f"{name}.onnx", cache_dir / f"{name}.int8.onnx"
    target = quantised if int8 else fp32
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # one builder at a time (serving workers start together; the quantiser writes a fixed temp name)
    with open(cache_dir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            _build(model_dir, fp32, quantised, int8)
    return target


def _build(model_dir: Path, fp32: Path, quantised: Path, int8: bool) -> None:
    if not fp32.is_file():
        _export(model_dir, fp32)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = quantised.with_suffix(f".{os.getpid()}.tmp")
        quantize_dynamic(fp32, partial, weight_type=QuantType.QInt8, per_channel=True)
        partial.replace(quantised)  # atomic: a reader sees no file or the whole file
    log.info("query encoder built: %s", quantised if int8 else fp32)


def _export(model_dir: Path, path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    # eager attention: the fused kernel's mask handling is traced with the example's shapes
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager").eval()
    example = tokenizer(["cordless drill", "a longer example query for the export"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"embedding": {0: "batch"}}
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            _pooled(model, names),
            tuple(example[n] for n in names),
            str(partial),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    partial.replace(path)


def _read_only(vec: np.ndarray) -> np.ndarray:
    """Cached vectors are shared by every caller: none may change them in place."""
    vec.flags.writeable = False
    return vec
