"""A query in one embedding space: the rows the ANN index is probed with, and how a stored vector
is scored against them. Both recommendation scorings are one formula,

    score(c) = max_i c·u_i - max_j c·n_j

so the runner's candidates, exact rescoring, filters and paging serve either unchanged:

* ``rocchio`` (default): one row u = normalise(parts + weighted mean of liked items
  - dislike_weight * (weighted mean of disliked items + negative texts)), no n: a plain cosine.
  One ANN probe, one list; the profile's tastes are blended into one direction.
* ``best``: one row per liked item, u_i = w_i * item_i + parts (the query's own text, image or
  sound), and one n_j = dislike_weight * u_j * disliked_j per disliked item or negative text: a
  candidate scores as its best liked item (plus the text) less its closest dislike. One ANN probe
  per liked item; a profile with several distinct tastes gets results from each, where the mean
  of two tastes may be near neither.

Weights default to 1; a weight scales the item's part (in ``rocchio`` its share of the mean, in
``best`` its cosine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Scoring = Literal["rocchio", "best"]
# Disliked items weigh a quarter of liked ones: the ratio of the Rocchio weights the IR literature
# settled on (beta 0.75, gamma 0.15), rounded up. Stronger, a dislike drags the query away from
# everything it shares with the likes (most of a vector, among photos), not just from itself.
DISLIKE_WEIGHT = 0.25


@dataclass(frozen=True)
class QueryVector:
    rows: np.ndarray  # (m, d) float32: u_i, not normalised in ``best`` (a weight scales a cosine)
    penalties: np.ndarray  # (j, d) float32: n_j, already scaled by their weights; (0, d) when none

    @property
    def probes(self) -> np.ndarray:
        """Unit rows the ANN index is searched with: the candidates of each u_i."""
        return self.rows / np.maximum(np.linalg.norm(self.rows, axis=1, keepdims=True), 1e-12)

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    @property
    def vector(self) -> np.ndarray:
        """The one unit vector of a Rocchio query (the first probe of a ``best`` one)."""
        return self.probes[0]

    def score(self, unit_rows: np.ndarray) -> np.ndarray:
        """Scores of stored unit vectors (n, d) against this query: (n,) float32."""
        if len(self.rows) == 1 and not len(self.penalties):
            # rerank.dot_rows (one thread: OpenBLAS's threaded matrix-vector product waits on a busy machine)
            return np.einsum("ij,j->i", unit_rows, self.rows[0].astype(unit_rows.dtype, copy=False)).astype(
                np.float32, copy=False)
        s = (unit_rows @ self.rows.T).max(axis=1)
        if len(self.penalties):
            s = s - (unit_rows @ self.penalties.T).max(axis=1)
        return s.astype(np.float32, copy=False)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def build(scoring: Scoring, parts: np.ndarray | None, likes: list[tuple[np.ndarray, float]],
          dislikes: list[tuple[np.ndarray, float]], negatives: list[np.ndarray],
          dislike_weight: float) -> QueryVector | None:
    """The query of one space from its pieces: ``parts`` the weighted sum of the query's own text,
    image and sound (None: none), ``likes``/``dislikes`` unit item vectors with their weights,
    ``negatives`` negative texts (weight 1 each). None when nothing positive reaches the space."""
    if parts is None and not likes:
        return None
    dim = (parts if parts is not None else likes[0][0]).shape[0]
    if scoring == "best" and likes:
        base = parts if parts is not None else np.zeros(dim, np.float32)
        rows = np.stack([w * v + base for v, w in likes])
        pen = [dislike_weight * w * v for v, w in dislikes] + [dislike_weight * v for v in negatives]
        penalties = np.stack(pen) if pen else np.zeros((0, dim), np.float32)
        return QueryVector(rows.astype(np.float32), penalties.astype(np.float32))
    v = parts.copy() if parts is not None else np.zeros(dim, np.float32)
    if likes:
        v = v + sum(w * u for u, w in likes) / len(likes)
    if dislikes:
        v = v - dislike_weight * sum(w * u for u, w in dislikes) / len(dislikes)
    if negatives:
        v = v - dislike_weight * np.sum(negatives, axis=0)
    return QueryVector(_unit(v)[None, :].astype(np.float32), np.zeros((0, dim), np.float32))
