"""Hugging Face sequence-classification models as a :class:`~robustops.text.models.TextClassifier`.

:class:`HFTextClassifier` wraps an ``AutoModelForSequenceClassification`` and its
``AutoTokenizer``, read from a **local directory only**: ``local_files_only=True`` (the hub is
never contacted), ``use_safetensors=True`` and ``trust_remote_code=False``. Before
``transformers`` reads a byte, the directory is checked: a pickle-format file anywhere in it
(``pytorch_model.bin``, ``*.pt``, ``*.pkl``, ``training_args.bin``, …) or a missing
``*.safetensors`` weights file raises :class:`~robustops.errors.UnsafeArtifactError` naming the
file, and a ``config.json`` that asks for remote code (``auto_map``) is refused.

The directory's content fingerprint (:func:`directory_fingerprint`, sha256 over its files in
sorted order) is recorded for results and may be pinned (``sha256=``).

:func:`tiny_bert` builds a small, randomly initialised BERT-style classifier with a WordPiece
tokenizer trained on given texts (for examples and tests; nothing is downloaded).

``transformers`` is an optional dependency (``pip install 'robustops[hf]'``); it is imported
only when a model is built, loaded or saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustops._util import file_sha256
from robustops.errors import SpecError, UnsafeArtifactError

__all__ = [
    "PICKLE_SUFFIXES",
    "HFTextClassifier",
    "check_hf_directory",
    "directory_fingerprint",
    "tiny_bert",
]

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".h5"})
"""File suffixes refused inside a model directory: pickle-based (or, for ``.h5``, Keras) weights
and training state that a loader could be tempted to unpickle."""


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise SpecError.single(
            "model.huggingface",
            "Hugging Face models need the transformers package: pip install 'robustops[hf]'",
        ) from None
    return transformers


def _files(root: Path) -> list[Path]:
    """Every regular file under ``root``, sorted by relative POSIX path."""
    return sorted(
        (p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()
    )


def directory_fingerprint(path: str | Path) -> str:
    """Hex sha256 of a directory's content: over ``"<relative path>\\0<file sha256>\\n"`` of every
    file under it, in sorted relative-path order (independent of timestamps and of where the
    directory lives)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in _files(root):
        h.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def check_hf_directory(path: str | Path, *, field: str = "model.huggingface.path") -> Path:
    """Refuse a model directory that is not safe to load: missing or not a directory
    (:class:`SpecError` naming ``field``); holding a pickle-format file (:data:`PICKLE_SUFFIXES`)
    or no ``*.safetensors`` weights, or a ``config.json`` asking for remote code
    (:class:`UnsafeArtifactError` naming the file). Returns the directory."""
    root = Path(path)
    if not root.is_dir():
        raise SpecError.single(field, f"not a directory: {root}")
    files = _files(root)
    for f in files:
        if f.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeArtifactError(
                f"{field}: {f} is a pickle-format file; only safetensors weights are loaded "
                "(convert it with save_pretrained(..., safe_serialization=True) and remove it)"
            )
    config = root / "config.json"
    if not config.is_file():
        raise SpecError.single(field, f"{root} has no config.json (not a save_pretrained folder)")
    if not any(f.suffix == ".safetensors" for f in files):
        raise UnsafeArtifactError(f"{field}: {root} holds no *.safetensors weights file")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError.single(field, f"{config} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise SpecError.single(field, f"{config} is not a JSON object")
    if "auto_map" in cfg:
        raise UnsafeArtifactError(
            f"{field}: {config} asks for remote code (auto_map); only built-in transformers "
            "architectures are loaded (trust_remote_code=False)"
        )
    return root


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars from ``transformers`` while loading or saving (the library never
    prints); the previous setting is restored."""
    hf_logging = transformers.utils.logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class HFTextClassifier:
    """A :class:`~robustops.text.models.TextClassifier` around a Hugging Face sequence-classification
    model and its tokenizer.

    ``predict_logits(texts)`` tokenizes ``batch_size`` texts at a time (padding, truncation to
    ``max_length`` tokens), runs the model in eval mode without gradients on ``device`` and returns
    ``(N, num_classes)`` float32 CPU logits. ``num_classes`` is the config's ``num_labels`` and
    ``class_names`` its ``id2label`` in id order. ``module`` is the ``torch.nn.Module`` (for
    fine-tuning, :func:`robustops.training.hf.fit_hf`).

    Attributes:
        fingerprint: :func:`directory_fingerprint` of the directory it was loaded from or last
            saved to; ``None`` for a classifier built in memory.
        source: that directory, or ``None``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int = 128,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        if max_length < 1 or batch_size < 1:
            raise SpecError.single(
                "model.huggingface", "max_length and batch_size must be positive"
            )
        self.module: torch.nn.Module = model.to(device).eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        config = model.config
        self.num_classes = int(config.num_labels)
        id2label = dict(getattr(config, "id2label", None) or {})
        self.class_names = [str(id2label.get(i, i)) for i in range(self.num_classes)]
        self.fingerprint: str | None = None
        self.source: Path | None = None

    def __repr__(self) -> str:
        return (
            f"HFTextClassifier({type(self.module).__name__}, num_classes={self.num_classes}, "
            f"max_length={self.max_length}, source={self.source})"
        )

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model sees them (no preprocessing: the tokenizer normalises)."""
        return list(texts)

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenized ``texts`` on ``device``: ``input_ids``, ``attention_mask`` (…) of shape
        ``(N, L)``, ``L <= max_length``, padded to the longest text of the batch."""
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def logits(self, texts: Sequence[str]) -> Tensor:
        """``(N, num_classes)`` logits of one batch, with gradients when enabled, on ``device``
        (the module's current mode; used by training)."""
        out: Tensor = self.module(**self.encode(texts)).logits
        return out

    @torch.no_grad()
    def predict_logits(self, texts: Sequence[str]) -> Tensor:
        """``(N, num_classes)`` logits, float32 on the CPU."""
        if isinstance(texts, str):
            raise TypeError("predict_logits takes a sequence of texts, not a single string")
        self.module.eval()
        out = [
            self.logits(texts[start : start + self.batch_size]).float().cpu()
            for start in range(0, len(texts), self.batch_size)
        ]
        if out:
            return torch.cat(out)
        return torch.empty(0, self.num_classes)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        sha256: str | None = None,
        max_length: int = 128,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        field: str = "model.huggingface.path",
    ) -> HFTextClassifier:
        """Read a ``save_pretrained`` directory (model and tokenizer) after
        :func:`check_hf_directory`; a pinned ``sha256`` (:func:`directory_fingerprint`) is checked
        before ``transformers`` parses anything. Never downloads: ``local_files_only=True``,
        ``use_safetensors=True``, ``trust_remote_code=False``."""
        root = check_hf_directory(path, field=field)
        fingerprint = directory_fingerprint(root)
        if sha256 is not None and fingerprint != sha256:
            raise UnsafeArtifactError(
                f"{field}: the content fingerprint of {root} is {fingerprint}, expected {sha256}"
            )
        transformers = _require_transformers()
        options = {"local_files_only": True, "trust_remote_code": False}
        with _quiet(transformers):
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(root), use_safetensors=True, **options
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(root), **options)
        clf = cls(model, tokenizer, max_length=max_length, batch_size=batch_size, device=device)
        clf.fingerprint, clf.source = fingerprint, root
        return clf

    def save(self, path: str | Path) -> str:
        """Write model (safetensors only) and tokenizer into directory ``path`` with
        ``save_pretrained``, through a temporary sibling directory renamed into place (an
        existing ``path`` is replaced). Returns the new :func:`directory_fingerprint`."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        transformers = _require_transformers()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model: Any = self.module
            with _quiet(transformers):
                model.save_pretrained(str(tmp))
                self.tokenizer.save_pretrained(str(tmp))
            check_hf_directory(tmp, field="train.out")  # safetensors written, no pickle
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                os.replace(target, old / target.name)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.fingerprint, self.source = directory_fingerprint(target), target
        return self.fingerprint


def tiny_bert(
    texts: Sequence[str],
    class_names: Sequence[str],
    *,
    vocab_size: int = 1000,
    hidden_size: int = 32,
    num_layers: int = 1,
    max_length: int = 48,
    seed: int = 0,
) -> HFTextClassifier:
    """A randomly initialised ``BertForSequenceClassification`` (``num_layers`` layers, hidden
    ``hidden_size``, 2 attention heads, ``max(64, max_length)`` positions) with a lower-casing
    WordPiece tokenizer of at most ``vocab_size`` tokens trained on ``texts`` (``[CLS] … [SEP]``
    template), one label per ``class_names`` entry (``id2label`` in order), as an
    :class:`HFTextClassifier` truncating to ``max_length`` tokens. The weights come from
    ``seed`` (torch's global generator is left as it was). Nothing is downloaded: save it with
    :meth:`HFTextClassifier.save` and fine-tune it (:func:`robustops.training.hf.fit_hf`)."""
    transformers = _require_transformers()  # Any: its stubs disagree with its kwargs-based API
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    names = [str(c) for c in class_names]
    config = transformers.BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max(64, max_length),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={c: i for i, c in enumerate(names)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification(config)
    return HFTextClassifier(model, tokenizer, max_length=max_length)
