"""Text attack benchmark: evading the SMS spam filter (targeted spam → ham), with and without
the sanitizer in front.

Models: the char n-gram EmbeddingBag classifier from ``train_text_classifier`` and a TF-IDF
(sublinear tf) + logistic regression (C=10) pipeline, built as the test fixtures build them,
each plain and trained + served with ``preprocess=sanitize``, and the hardened filter of
``configs/sms_spam.yaml`` (sanitizer + adversarial data augmentation) next to the same recipe
without augmentation. For each model and each text
attack, the test spam messages the model detects are attacked with the default budgets (at most
20% of the words edited, no query limit); reported: evasion success rate, mean edits and mean
queries per success, mean queries per message, seconds.

    .venv/bin/python benchmarks/text_attacks.py    # table; JSON in benchmarks/results/
    .venv/bin/python benchmarks/text_attacks.py --seeds 5 --out benchmarks/results/text_attacks_defenses.json

``--textattack`` also runs TextAttack's DeepWordBug recipe (Gao et al. 2018) on the two plain
models and the same messages, as it ships and with a 20%-of-words limit. It needs an environment
where ``textattack`` imports, which this project's is not (see the module's report in the
results: TextAttack downloads NLTK data on first import).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch import Tensor

from robustops._util import environment
from robustops.attacks import available_attacks, build_attack, get_attack
from robustops.config import load_spec
from robustops.data.sms_spam import TextDataset, load_sms_spam
from robustops.text.models import (
    SklearnTextClassifier,
    TextClassifier,
    char_ngram_classifier,
)
from robustops.text.sanitize import sanitize
from robustops.threats import ThreatModel
from robustops.training.text import fit_text, train_text_classifier

RESULTS = Path(__file__).parent / "results" / "text_attacks.json"
SPEC = Path(__file__).parents[1] / "configs" / "sms_spam.yaml"


def _models(data: TextDataset) -> dict[str, TextClassifier]:
    def tfidf(preprocess: Any = None) -> TextClassifier:
        texts = [preprocess(t) for t in data.texts_train] if preprocess else data.texts_train
        pipe = make_pipeline(
            TfidfVectorizer(sublinear_tf=True), LogisticRegression(C=10.0, max_iter=1000)
        )
        pipe.fit(texts, data.y_train.numpy())
        return SklearnTextClassifier(pipe, preprocess=preprocess)

    return {
        "char-ngram": train_text_classifier(data.texts_train, data.y_train, seed=0),
        "char-ngram + sanitize": train_text_classifier(
            data.texts_train, data.y_train, seed=0, preprocess=sanitize
        ),
        **_spec_models(data),
        "tfidf-lr": tfidf(),
        "tfidf-lr + sanitize": tfidf(sanitize),
    }


def _spec_models(data: TextDataset, seed: int | None = None) -> dict[str, TextClassifier]:
    """The hardened filter of ``configs/sms_spam.yaml`` (sanitizer + adversarial augmentation:
    char-edit, split and synonym attacks on the training spam before epochs 2-6) and the same
    model and recipe with ``augment`` removed, which isolates what augmentation adds; ``seed``
    replaces the spec's (initialisation, batch order, augmentation draws)."""
    spec = load_spec(SPEC)
    if seed is not None:
        spec = spec.model_copy(update={"seed": seed})
    assert spec.train is not None
    out: dict[str, TextClassifier] = {}
    for name, recipe in (
        (
            "char-ngram + sanitize (spec recipe, no augment)",
            spec.train.model_copy(update={"augment": None}),
        ),
        ("char-ngram + sanitize + augment (spec)", spec.train),
    ):
        clf = char_ngram_classifier(
            data.texts_train, seed=spec.seed, num_classes=data.num_classes, **spec.model.kwargs
        )
        start = time.perf_counter()
        fit_text(clf, data.texts_train, data.y_train, recipe, seed=spec.seed)
        print(f"trained {name} in {time.perf_counter() - start:.1f}s", flush=True)
        out[name] = clf
    return out


def _detected_spam(model: TextClassifier, data: TextDataset) -> list[str]:
    spam = [t for t, y in zip(data.texts_test, data.y_test.tolist(), strict=True) if y == 1]
    pred = model.predict_logits(spam).argmax(1).tolist()
    return [t for t, p in zip(spam, pred, strict=True) if p == 1]


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def run_ours(models: dict[str, TextClassifier], data: TextDataset) -> list[dict[str, Any]]:
    rows = []
    n_spam = int((data.y_test == 1).sum())
    for model_name, model in models.items():
        texts = _detected_spam(model, data)
        ones = torch.ones(len(texts), dtype=torch.int64)
        evaded = [False] * len(texts)
        spam_to_ham = ThreatModel(
            name="spam-to-ham",
            norm="word-edits",
            epsilon=0.2,
            knowledge="score-based",
            targeted=True,
        )
        for name in available_attacks():
            if "word-edits" not in get_attack(name).norms:
                continue
            attack = build_attack(name, spam_to_ham, seed=0)
            start = time.perf_counter()
            res = attack(model, texts, ones, targets=torch.zeros_like(ones))
            seconds = time.perf_counter() - start
            ok = res.success.tolist()
            edits = [len(e) for e, s in zip(res.edits, ok, strict=True) if s]
            queries = [q for q, s in zip(res.queries.tolist(), ok, strict=True) if s]
            kinds: dict[str, int] = {}
            for es, s in zip(res.edits, ok, strict=True):
                for e in es if s else ():
                    kinds[e.kind] = kinds.get(e.kind, 0) + 1
            rows.append(
                {
                    "model": model_name,
                    "attack": name,
                    "params": attack.params(),
                    "spam_test": n_spam,
                    "detected": len(texts),
                    "success_rate": round(sum(ok) / len(texts), 4) if texts else None,
                    "successes": sum(ok),
                    "mean_edits_per_success": _mean(edits),
                    "mean_queries_per_success": _mean(queries),
                    "mean_queries": _mean(res.queries.tolist()),
                    "max_queries": max(res.queries.tolist(), default=0),
                    "edit_kinds": dict(sorted(kinds.items())),
                    "seconds": round(seconds, 2),
                    "example": _example(texts, res.adversarial, ok),
                }
            )
            r = rows[-1]
            evaded = [a or b for a, b in zip(evaded, ok, strict=True)]
            print(
                f"{model_name:22s} {name:10s} {r['success_rate']:.3f} "
                f"({r['successes']}/{len(texts)}) {seconds:.1f}s",
                flush=True,
            )
        # The suite's worst case: a message evades when any of the attacks got it through.
        rows.append(
            {
                "model": model_name,
                "attack": "any of the six (worst case)",
                "spam_test": n_spam,
                "detected": len(texts),
                "success_rate": round(sum(evaded) / len(texts), 4) if texts else None,
                "successes": sum(evaded),
                "mean_edits_per_success": None,
                "mean_queries_per_success": None,
                "seconds": round(sum(r["seconds"] for r in rows[-6:]), 2),
            }
        )
    return rows


def _example(texts: list[str], adversarial: list[str], ok: list[bool]) -> dict[str, str] | None:
    for text, adv, s in zip(texts, adversarial, ok, strict=True):
        if s:
            return {"original": text, "adversarial": adv}
    return None


# --- TextAttack's DeepWordBug, for comparison -------------------------------------------------------


def run_textattack(models: dict[str, TextClassifier], data: TextDataset) -> list[dict[str, Any]]:
    import textattack  # type: ignore[import-not-found]
    from textattack.models.wrappers import ModelWrapper  # type: ignore[import-not-found]

    class Wrapper(ModelWrapper):  # type: ignore[misc]
        def __init__(self, clf: TextClassifier) -> None:
            self.model = clf
            self.calls = 0

        def __call__(self, text_input_list: list[str]) -> Tensor:
            self.calls += len(text_input_list)
            return torch.softmax(self.model.predict_logits(text_input_list), dim=1)

    rows = []
    for model_name in ("char-ngram", "tfidf-lr"):
        rows += _textattack_on(models[model_name], model_name, data, textattack, Wrapper)
    return rows


def _textattack_on(
    model: TextClassifier, model_name: str, data: TextDataset, textattack: Any, wrapper_cls: Any
) -> list[dict[str, Any]]:
    from textattack.attack_recipes import DeepWordBugGao2018  # type: ignore[import-not-found]
    from textattack.constraints.overlap import MaxWordsPerturbed  # type: ignore[import-not-found]

    texts = _detected_spam(model, data)
    dataset = textattack.datasets.Dataset([(t, 1) for t in texts])
    rows = []
    for variant in ("recipe", "recipe + max 20% words"):
        wrapper = wrapper_cls(model)
        attack = DeepWordBugGao2018.build(wrapper)
        if variant != "recipe":
            constraints = [
                *attack.pre_transformation_constraints,
                *attack.constraints,
                MaxWordsPerturbed(max_percent=0.2),
            ]
            attack = textattack.Attack(
                attack.goal_function, constraints, attack.transformation, attack.search_method
            )
        args = textattack.AttackArgs(
            num_examples=len(texts), disable_stdout=True, silent=True, random_seed=0
        )
        start = time.perf_counter()
        results = textattack.Attacker(attack, dataset, args).attack_dataset()
        seconds = time.perf_counter() - start
        ok = [type(r).__name__ == "SuccessfulAttackResult" for r in results]
        queries = [int(r.num_queries) for r, s in zip(results, ok, strict=True) if s]
        edits = [
            len(r.original_result.attacked_text.all_words_diff(r.perturbed_result.attacked_text))
            for r, s in zip(results, ok, strict=True)
            if s
        ]
        rows.append(
            {
                "model": model_name,
                "attack": f"textattack DeepWordBug ({variant})",
                "textattack_version": getattr(textattack, "__version__", "unknown"),
                "detected": len(texts),
                "success_rate": round(sum(ok) / len(texts), 4),
                "successes": sum(ok),
                "mean_edits_per_success": _mean(edits),
                "mean_queries_per_success": _mean(queries),
                "mean_queries": _mean([int(r.num_queries) for r in results]),
                "model_calls": wrapper.calls,
                "seconds": round(seconds, 2),
            }
        )
        print(rows[-1], flush=True)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | attack | detected spam | evasion rate | edits / success | queries / success "
        "| queries / message | s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def fmt(v: Any, spec: str = ".1f") -> str:
        return "–" if v is None else format(v, spec)

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['attack']} | {r['detected']} | "
            f"{fmt(100 * r['success_rate'])}% ({r['successes']}) | "
            f"{fmt(r['mean_edits_per_success'], '.2f')} | {fmt(r['mean_queries_per_success'])} "
            f"| {fmt(r.get('mean_queries'))} | {fmt(r['seconds'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--textattack", action="store_true", help="also run TextAttack's DeepWordBug"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="also train the two configs/sms_spam.yaml models with seeds 1..N-1 (augmentation's "
        "effect across training seeds)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_sms_spam()
    start = time.perf_counter()
    models = _models(data)
    print(f"trained {len(models)} models in {time.perf_counter() - start:.1f}s", flush=True)
    rows = run_ours(models, data)
    for seed in range(1, args.seeds):
        for row in run_ours(_spec_models(data, seed), data):
            rows.append({**row, "model": f"{row['model']}, seed {seed}"})
    if args.textattack:
        rows += run_textattack(models, data)
    table = _table(rows)
    print(table)
    report: dict[str, Any] = {
        "benchmark": "text_attacks",
        "threat": "targeted evasion, spam -> ham, test spam messages the model detects",
        "data": data.describe(),
        "environment": environment(),
        "rows": rows,
        "table": table,
    }
    if args.textattack:
        # TextAttack downloads NLTK data on first import; where it came from matters.
        keys = ("NLTK_DATA", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
        report["textattack_environment"] = {k: os.environ.get(k) for k in keys}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            report,
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
