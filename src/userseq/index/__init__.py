"""ANN indexes over item and user embeddings (faiss flat / HNSW / IVF-PQ, exact fallback)."""

from userseq.index.knn_embed import KnnEmbed, KnnEmbedConfig, allot, spherical_kmeans
from userseq.index.run import RunIndex
from userseq.index.stream import iter_user_vectors, write_user_embeddings
from userseq.index.vector import (
    IndexConfig,
    VectorIndex,
    exact_search,
    faiss_available,
    recall_at_k,
)

__all__ = ["IndexConfig", "KnnEmbed", "KnnEmbedConfig", "RunIndex", "VectorIndex", "allot",
           "exact_search", "faiss_available", "iter_user_vectors", "recall_at_k",
           "spherical_kmeans", "write_user_embeddings"]
