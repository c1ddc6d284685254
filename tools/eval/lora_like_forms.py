#!/usr/bin/env python3
"""The representations a LoRA-like module of the "mix" family (tools/eval/lora_like.py: 8 tasks,
1024², rank 16, A the shared init moved 15 %, every column of B half shared, half the task's own)
could take at storage 0.5, measured in numpy: a row basis of K shared by the tasks with per-task
coordinates; those coordinates as their mean plus each task's own truncation; and RMM over the
tasks' coordinates row by row. Storage is printed relative to the module's share at 0.5 (1 = the
budget), the error as the root mean over tasks of the squared relative delta error. Needs numpy.

    python3 tools/eval/lora_like_forms.py
"""
import numpy as np


def main():
    rng = np.random.default_rng(0)
    r, d, n = 16, 1024, 8
    a0 = rng.standard_normal((r, d)) / np.sqrt(d)
    b_shared = rng.standard_normal((d, r))
    A = [a0 + 0.15 * rng.standard_normal((r, d)) / np.sqrt(d) for _ in range(n)]
    B = [0.5 * b_shared + 0.5 * rng.standard_normal((d, r)) for _ in range(n)]
    W = [b @ a for a, b in zip(A, B)]
    norm_sq = [np.sum(w * w) for w in W]
    budget = 0.5 * n * r * 2 * d

    def error(approx):
        return np.sqrt(np.mean([np.sum((x - w) ** 2) / s for x, w, s in zip(approx, W, norm_sq)]))

    # The shared row basis: top right singular vectors of the tasks' rows weighed by their B's.
    rows = np.vstack([np.linalg.cholesky(b.T @ b).T @ a for a, b in zip(A, B)])
    vt = np.linalg.svd(rows, full_matrices=False)[2]
    for K in (12, 14, 16):
        V = vt[:K].T
        C = [w @ V for w in W]
        print(f"shared rows K = {K}: storage {(d * K + n * d * K) / budget:.3f}, error {error([c @ V.T for c in C]):.3f}")
        mean = np.mean(C, 0)
        for k in (10, 11, 12):
            approx = []
            for c in C:
                u, s, wt = np.linalg.svd(c - mean, full_matrices=False)
                approx.append((mean + (u[:, :k] * s[:k]) @ wt[:k]) @ V.T)
            storage = (2 * d * K + n * k * (d + K)) / budget
            if storage <= 1:
                print(f"  + coordinates as their mean and each task's own rank {k}: storage {storage:.3f}, "
                      f"error {error(approx):.3f}")
        X = np.stack(C)  # tasks × rows × K
        for P in (2, 3, 4):
            approx = np.zeros_like(X)
            for j in range(d):
                Y = X[:, j, :]
                mu = Y.mean(0)
                u, s, wt = np.linalg.svd(Y - mu, full_matrices=False)
                approx[:, j, :] = mu + (u[:, :P] * s[:P]) @ wt[:P]
            storage = (d * K + d * (K + P * K + P * n)) / budget
            if storage <= 1:
                print(f"  + RMM over the tasks' coordinates, P = {P}: storage {storage:.3f}, "
                      f"error {error([x @ V.T for x in approx]):.3f}")


if __name__ == "__main__":
    main()
