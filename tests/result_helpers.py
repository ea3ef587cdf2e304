"""Helpers for tests that compare suite results (importable from every test folder: pytest puts
``tests/`` on ``sys.path`` for its conftest)."""

from __future__ import annotations

from robustops.evaluation import SuiteResult


def assert_same_per_sample(a: SuiteResult, b: SuiteResult) -> None:
    """``a`` and ``b`` agree sample by sample (the clean record, and per threat each sample's
    outcome, first breaking attack, queries and target) and on every figure derived from that:
    accuracies, per-attack counts and queries, and the examples kept. Wall times may differ."""
    assert a.n_samples == b.n_samples
    assert a.samples == b.samples
    assert a.clean_accuracy == b.clean_accuracy
    for ta, tb in zip(a.threats, b.threats, strict=True):
        assert ta.robust == tb.robust, ta.name
        assert ta.broken_by == tb.broken_by, ta.name
        assert ta.queries == tb.queries, ta.name
        assert ta.targets == tb.targets, ta.name
        assert ta.robust_accuracy == tb.robust_accuracy
        assert ta.attack_success_rate == tb.attack_success_rate
        for fa, fb in zip(ta.attacks, tb.attacks, strict=True):
            assert (fa.n_attacked, fa.n_broken, fa.total_queries) == (
                fb.n_attacked,
                fb.n_broken,
                fb.total_queries,
            )
        assert [(e.index, e.attack) for e in ta.examples] == [
            (e.index, e.attack) for e in tb.examples
        ]
