"""inference.py: the shared model-running path gives what the model computes by hand."""

from __future__ import annotations

import numpy as np
import torch

from attncluster.config import load_config
from attncluster.inference import TorchPredictor, load_vocabulary
from attncluster.model import AttentionCluster


def test_torch_predictor_dequantizes_and_scores_like_the_model(tmp_path):
    cfg = load_config(None, ["model.num_classes=5", "model.hidden_sizes=[16]", "model.cluster_nums=2"])
    torch.manual_seed(0)
    model = AttentionCluster(**cfg.model.model_kwargs()).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    q = {"rgb": rng.integers(0, 256, (3, 7, 1024), dtype=np.uint8),
         "audio": rng.integers(0, 256, (3, 7, 128), dtype=np.uint8)}
    # Dataset dequantization written out: q * 4/255 + 4/512 - 2.
    f = {m: torch.from_numpy(v.astype(np.float64) * (4.0 / 255) + 4.0 / 512 - 2.0).float() for m, v in q.items()}
    with torch.no_grad():
        expected = torch.sigmoid(model(f)).numpy()
    got = TorchPredictor(cfg, str(tmp_path / "w.pt"), torch.device("cpu")).scores(q)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_vocabulary_names_by_index(tmp_path):
    (tmp_path / "v.csv").write_text('Index,TrainVideoCount,Name\n1,5,"Car, red"\n0,9,Game\n')
    assert load_vocabulary(str(tmp_path / "v.csv"), 2) == ["Game", "Car, red"]


def test_top_classes_orders_by_score_then_lower_index_among_ties():
    import numpy as np

    from attncluster.inference import top_classes

    scores = np.array([[0.1, 0.5, 0.5, 0.2], [1.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    classes, top = top_classes(scores, 3)
    # by hand: row 0 -> 0.5 (1), 0.5 (2), 0.2 (3); row 1 -> 1.0 (0), 1.0 (3), 0.0 (1)
    assert classes.tolist() == [[1, 2, 3], [0, 3, 1]]
    assert top.tolist() == [[0.5, 0.5, np.float32(0.2)], [1.0, 1.0, 0.0]]
    c1, t1 = top_classes(scores[0], 2)
    assert c1.tolist() == [1, 2] and t1.shape == (2,)
