"""Evaluation: reference-exact metrics, tasks as data, a resumable harness, reports.

    metrics/          one module per metric family, each equal to its reference (see metrics/__init__.py)
    tasks.py          task specs and sample JSONL (the shared formats), validation, the task registry
    builtin_tasks.py  easy-vqa (from its package), the visual-world hook (vlmkit.data.worlds), retrieval, zeroshot-fmnist
    harness.py        batched, resumable inference; scoring by slice; pass bars
    embedding.py      dual-encoder tasks (retrieval recall@k, zero-shot accuracy) through the same harness
    embedding_data.py their built-in data, from held-out test splits
    report.py         report.md beside results.json; comparison of two runs
    charts.py         PNG charts: slice bars against their bars, confusion matrices, comparisons
    lmms_adapter.py   a vlmkit model as an lmms-eval backend (lmms_plugin/ registers it)

Library code here imports nothing optional at module level: matplotlib, PyYAML,
easy-vqa and lmms-eval are imported where they are used.
"""
