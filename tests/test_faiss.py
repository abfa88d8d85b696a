"""faiss-gpu imports and runs exact CPU indexes on a machine without a GPU, matching brute force."""

import faiss
import numpy as np
import torch


def test_faiss_gpu_package_runs_cpu_indexes():
    assert faiss.get_num_gpus() >= 0  # the GPU build imports; 0 GPUs here is fine
    rng = np.random.default_rng(0)
    database = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    d_ref = torch.cdist(torch.from_numpy(queries), torch.from_numpy(database)) ** 2  # brute force
    ip_ref = torch.from_numpy(queries) @ torch.from_numpy(database).T

    l2 = faiss.IndexFlatL2(32)
    l2.add(database)
    distances, ids = l2.search(queries, 3)
    assert (ids == d_ref.topk(3, largest=False).indices.numpy()).all()
    assert np.allclose(distances, d_ref.topk(3, largest=False).values.numpy(), rtol=1e-4, atol=1e-3)

    ip = faiss.IndexFlatIP(32)
    ip.add(database)
    scores, ids = ip.search(queries, 3)
    assert (ids == ip_ref.topk(3).indices.numpy()).all()
    assert np.allclose(scores, ip_ref.topk(3).values.numpy(), rtol=1e-4, atol=1e-3)
