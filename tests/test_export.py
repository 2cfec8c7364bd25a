"""The exported SavedModel's signature, on real photos."""
import numpy as np
import tensorflow as tf

from flowers import base_path


def test_signature_takes_bytes_and_returns_key_prediction_label_scores(exported_model):
    fn = tf.saved_model.load(exported_model["version_path"]).signatures["serving_default"]
    assert set(fn.structured_input_signature[1]) == {"key", "image_bytes"}
    held = exported_model["held_out"]
    paths = [p for c in exported_model["labels"] for p in held[c]]
    out = fn(key=tf.constant([str(i) for i in range(len(paths))]),
             image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    assert out["key"].numpy().tolist() == [str(i).encode() for i in range(len(paths))]
    scores = out["scores"].numpy()
    assert scores.shape == (len(paths), 5)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    truth = [i for i, c in enumerate(exported_model["labels"]) for _ in held[c]]
    assert np.mean(out["prediction"].numpy() == truth) >= 0.6
    assert [lab.decode() for lab in out["label"].numpy()] == [exported_model["labels"][i]
                                                           for i in out["prediction"].numpy()]


def test_next_version(tmp_path):
    assert base_path.next_version(str(tmp_path / "none")) == 1
    for name in ("1", "7", "notes", "3"):
        (tmp_path / name).mkdir()
    assert base_path.next_version(str(tmp_path)) == 8
