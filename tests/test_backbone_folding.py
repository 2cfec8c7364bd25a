"""Batch norm folded into the convolutions at load time: the same embeddings (and logits) as the
wheel's graph with separate BatchNormalization layers, within 1e-4, on real photos."""
import keras
import numpy as np
import pytest

from flowers.core import backbones, images
from flowers.core.backbones import efficientnet_lite


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_folded_backbone_matches_the_unfolded_one(photos, name):
    size = backbones.get(name).image_size
    paths = [photos[label][i] for label in sorted(photos) for i in (0, 9)]
    x = np.stack([images.load_image(open(p, "rb").read(), size) for p in paths])
    for include_top in (False, True):
        folded = efficientnet_lite.build(name, size, include_top=include_top)
        reference = efficientnet_lite.build(name, size, include_top=include_top, fold_bn=False)
        assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
        assert len(reference.layers) > len(folded.layers)  # the reference really has its BN layers
        np.testing.assert_allclose(folded.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-4, rtol=0)
    assert backbones.load(name).count_params() == folded.count_params() - 1000 * 1281  # load() folds
