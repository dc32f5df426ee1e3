"""Retrieval with a dual encoder: a persistent image index, text/image search, zero-shot classification.

    index.py      ImageIndex (SQLite metadata + vectors, the source of truth) and index_images (incremental)
    stores/       ANN backends behind one interface: usearch (embedded, default), qdrant, exact numpy
    search.py     text or image queries, optional VLM rerank
    metrics.py    recall@k for text->image and image->image retrieval
    classify.py   prompt-template ensembles, zero-shot classification with abstention
    calibrate.py  abstention thresholds for a target precision
"""
