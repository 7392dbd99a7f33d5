"""evaluate.py and the one Predictor path: every predictor (torch, ONNX, or any object with run) goes through the
same loop, inference.score_batches, for eval, training's validation and predict."""

import numpy as np
import pytest
import torch

from attncluster.config import load_config
from attncluster.evaluate import run_evaluation
from attncluster.inference import Predictor, TorchPredictor, score_batches
from attncluster.model import AttentionCluster


class TablePredictor(Predictor):
    """Scores from a table, by the first feature of each video (its row): a predictor with no model at all."""

    def __init__(self, table: np.ndarray) -> None:
        self.table, self.modalities, self.num_classes, self.loss = table, {"rgb": 1}, table.shape[1], "bce"

    def run(self, features):
        rows = np.asarray(features["rgb"])[:, 0, 0].astype(int)
        scores = self.table[rows].astype(np.float32)
        return scores, np.log(scores / (1 - scores)).astype(np.float32)


def _batches(labels, size):
    """Collated batches as the DataLoader gives them: features, labels, ids."""
    out = []
    for lo in range(0, len(labels), size):
        rows = range(lo, min(lo + size, len(labels)))
        out.append({"rgb": torch.tensor([[[float(i)]] for i in rows]), "labels": torch.tensor(labels[lo:lo + size]),
                    "id": [f"v{i}" for i in rows]})
    return out


def _gap_by_hand(scores, labels, k):
    """GAP as the YouTube-8M starter defines it: pool each video's top-k, rank by score, sum precision at each
    positive, divide by every label (also those outside the top-k)."""
    pairs = []
    for s, y in zip(scores, labels):
        for c in np.argsort(-s, kind="stable")[:k]:
            pairs.append((s[c], y[c]))
    pairs.sort(key=lambda p: -p[0])
    hits, total = 0, 0.0
    for rank, (_, y) in enumerate(pairs, start=1):
        if y:
            hits += 1
            total += hits / rank
    return total / labels.sum()


def test_any_predictor_runs_through_the_one_evaluation_loop():
    table = np.array([[0.9, 0.2, 0.1, 0.4], [0.3, 0.8, 0.6, 0.05], [0.15, 0.7, 0.95, 0.5], [0.35, 0.25, 0.55, 0.45],
                      [0.65, 0.12, 0.22, 0.85]])
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=np.float32)
    cfg = load_config(None, ["model.num_classes=4", "model.feature_dims={rgb: 1}", "eval.top_k=2"])
    predictor = TablePredictor(table)
    assert isinstance(predictor, Predictor)
    m = run_evaluation(predictor, _batches(labels, 2), cfg)
    assert m["num_videos"] == 5 and m["num_labels"] == 8
    assert m["gap"] == pytest.approx(_gap_by_hand(table, labels, 2), abs=1e-12)
    assert m["hit_at_1"] == pytest.approx(4 / 5)  # top-1 classes 0, 1, 2, 2, 3: all but video 3 are hits
    # the batch size changes nothing but the order of the loss sum
    again = run_evaluation(predictor, _batches(labels, 5), cfg)
    assert again["gap"] == m["gap"] and again["loss"] == pytest.approx(m["loss"], rel=1e-6)


def test_score_batches_keeps_each_batch_with_its_scores():
    table = np.array([[0.2, 0.9], [0.6, 0.3], [0.5, 0.5]])
    seen = [(b["id"], s) for b, s, _ in score_batches(TablePredictor(table), _batches(np.zeros((3, 2)), 2))]
    assert [ids for ids, _ in seen] == [["v0", "v1"], ["v2"]]
    np.testing.assert_array_equal(np.concatenate([s for _, s in seen]), table.astype(np.float32))


def test_torch_predictor_run_is_the_models_forward_with_its_scores():
    cfg = load_config(None, ["model.num_classes=5", "model.feature_dims={rgb: 6, audio: 3}", "model.seg_num=4",
                             "model.cluster_nums=2", "model.hidden_sizes=[8]"])
    torch.manual_seed(0)
    model = AttentionCluster(**cfg.model.model_kwargs())
    x = {"rgb": torch.randint(0, 256, (3, 4, 6), dtype=torch.uint8), "audio": torch.rand(3, 4, 3)}
    predictor = TorchPredictor.from_model(model, cfg, torch.device("cpu"))
    assert isinstance(predictor, Predictor) and not model.training
    scores, logits = predictor.run(x)
    from attncluster.data.records import dequantize

    with torch.no_grad():
        expected = model({"rgb": dequantize(x["rgb"]), "audio": x["audio"]})
    np.testing.assert_array_equal(logits, expected.numpy())
    np.testing.assert_array_equal(scores, torch.sigmoid(expected).numpy())
    np.testing.assert_array_equal(predictor.scores(x), scores)
