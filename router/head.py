"""A light classifier head: multinomial logistic regression on the (unit) embeddings.

Trained full-batch with L-BFGS in torch (a few hundred milliseconds for thousands of
examples). The logit scale is fixed (embeddings are unit vectors, so raw inner products are
tiny) and the L2 penalty keeps weights near a scaled centroid classifier when data is scarce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SCALE = 20.0


@dataclass
class LogisticHead:
    """Example::

    >>> import numpy as np
    >>> x = np.eye(3, dtype="float32"); y = np.array([0, 1, 2])
    >>> head = LogisticHead.train(x, y, n_classes=3)
    >>> int(head.predict_proba(x[:1]).argmax())
    0
    """

    weight: np.ndarray  # (dim, n_classes)
    bias: np.ndarray  # (n_classes,)

    @classmethod
    def train(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        n_classes: int,
        l2: float = 1e-4,
        max_iter: int = 100,
        sample_weight: np.ndarray | None = None,
    ) -> LogisticHead:
        import torch

        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        sw = torch.as_tensor(
            np.ones(len(y), np.float32)
            if sample_weight is None
            else sample_weight.astype(np.float32)
        )
        w = torch.zeros(xt.shape[1], n_classes, requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = xt @ w * _SCALE + b
            loss = torch.nn.functional.cross_entropy(logits, yt, reduction="none")
            loss = (loss * sw).sum() / sw.sum() + l2 * (w**2).sum()
            loss.backward()
            return loss

        # One thread: the problem is small, and on a busy machine OpenMP threads spinning
        # against each other made training 8x slower than a single thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.enable_grad():
                opt.step(closure)
        finally:
            torch.set_num_threads(threads)
        return cls(
            weight=(w.detach().numpy() * _SCALE).astype(np.float32),
            bias=b.detach().numpy().astype(np.float32),
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
