import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sharpclip.eval import metrics as m

# One query, gallery of 5, positives at ranks 1 and 3 (scores distinct).
SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
RELEVANT = np.array([[True, False, True, False, False]])


def test_recall_hand_computed():
    scores = np.array([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    relevant = np.array([[True, False, False], [True, False, True]])
    # query 0: the positive is ranked 3rd; query 1: a positive is ranked 1st.
    assert m.recall_at_k(scores, relevant, [1, 2, 3]) == {1: 0.5, 2: 0.5, 3: 1.0}


def test_average_precision_hand_computed():
    # precision at ranks 1 and 3: 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert m.average_precision(SCORES, RELEVANT)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_minp_hand_computed():
    # 2 positives, the last at rank 3 -> 2/3
    assert m.mean_inverse_negative_penalty(SCORES, RELEVANT) == pytest.approx(2 / 3)


def test_ndcg_hand_computed():
    dcg = 1 / np.log2(2) + 1 / np.log2(4)
    ideal = 1 / np.log2(2) + 1 / np.log2(3)
    assert m.ndcg_at_k(SCORES, RELEVANT, 3) == pytest.approx(dcg / ideal)
    assert m.ndcg_at_k(SCORES, RELEVANT, 1) == pytest.approx(1.0)


def test_ndcg_perfect_ranking_is_one():
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    relevant = np.array([[True, True, False, False]])
    assert m.ndcg_at_k(scores, relevant, 4) == pytest.approx(1.0)


def test_ties_break_by_index():
    scores = np.zeros((1, 4))
    relevant = np.array([[False, False, False, True]])
    assert m.recall_at_k(scores, relevant, [3, 4]) == {3: 0.0, 4: 1.0}


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 200))
    relevant = rng.random((50, 200)) < 0.1
    relevant[:, 0] = True  # every query needs a positive
    expected = [average_precision_score(r, s) for r, s in zip(relevant, scores)]
    np.testing.assert_allclose(m.average_precision(scores, relevant), expected, rtol=1e-12)
    assert m.mean_average_precision(scores, relevant) == pytest.approx(np.mean(expected))


def test_binding_accuracy():
    assert m.binding_accuracy([0.9, 0.2, 0.5], [0.1, 0.3, 0.5]) == pytest.approx(1 / 3)


def test_query_without_positive_is_refused():
    with pytest.raises(ValueError, match="query 1"):
        m.recall_at_k(np.ones((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], bool), [1])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        m.average_precision(np.ones((2, 3)), np.ones((2, 4), bool))


def test_leave_one_out_map_hand_computed():
    # Four images on a line: a0=(1,0), a1=(0.8,0.6), b0=(0.6,0.8), b1=(0,1); labels a a b b.
    emb = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]])
    labels = np.array([0, 0, 1, 1])
    # a0 ranks a1 (0.8) first: AP 1. a1 ranks a0 (0.8) and b0 (0.96): b0 first, so AP = 1/2.
    # b0 symmetric to a1: AP 1/2; b1 symmetric to a0: AP 1. The query is never its own hit.
    assert m.leave_one_out_map(emb, labels) == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)


def test_leave_one_out_map_skips_singleton_classes():
    emb = np.eye(3)
    assert m.leave_one_out_map(emb, np.array([0, 0, 1])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two images"):
        m.leave_one_out_map(emb, np.array([0, 1, 2]))


def test_knn_accuracy_weights_votes_by_exp_similarity():
    # Query 0's neighbours: one of class 1 at sim 0.9, two of class 0 at sim 0.5 and 0.45.
    # With temperature 0.1: exp(9) = 8103 > exp(5) + exp(4.5) = 238; plain majority would say 0.
    emb = np.array([[1.0, 0.0, 0.0], [0.9, np.sqrt(1 - 0.81), 0.0],
                    [0.5, 0.0, np.sqrt(0.75)], [0.45, -np.sqrt(1 - 0.2025), 0.0]])
    labels = np.array([0, 1, 0, 0])
    scores = emb @ emb.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1)[:, :3]
    expected = []
    for q in range(4):
        votes = {}
        for j in order[q]:
            votes[labels[j]] = votes.get(labels[j], 0.0) + np.exp(scores[q, j] / 0.1)
        expected.append(max(sorted(votes), key=lambda c: votes[c]) == labels[q])
    assert m.knn_accuracy(emb, labels, k=3, temperature=0.1) == pytest.approx(np.mean(expected))
    assert not expected[0]  # query 0 is outvoted by the one close class-1 item
