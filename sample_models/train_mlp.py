"""Train the scikit-learn tanh MLP sample used by sound mode (issue 8).

Run from the repository root (needs the ``train`` extra, i.e. scikit-learn)::

    python sample_models/train_mlp.py

Data: scikit-learn's bundled 8x8 handwritten digits (no download), scaled to [0, 1]; 20%
held out (stratified, ``random_state=0``). Model: ``MLPClassifier(hidden_layer_sizes=(32,),
activation="tanh", random_state=0)``, converted to ``nn.Sequential(Flatten, Linear(64, 32),
Tanh, Linear(32, 10))`` and checked against scikit-learn's own decision values.

Outputs (inside ``sample_models/``):

* ``digits_tanh_mlp.pt2``  torch.export program (float32, dynamic batch), input (N, 1, 8, 8)
* ``digits8.pt``           the first 16 held-out images, a float32 (16, 1, 8, 8) tensor

Deterministic: scikit-learn's solver is seeded and the export is of fixed weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from torch import nn

HERE = Path(__file__).resolve().parent
N_SAMPLES = 16
MIN_ACC = 0.9


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    digits = load_digits()
    x = digits.images.reshape(len(digits.images), -1) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, stratify=digits.target, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(32,), activation="tanh", max_iter=1000,
                        random_state=0)
    clf.fit(x_train, y_train)
    acc = clf.score(x_test, y_test)
    print(f"held-out accuracy {acc:.3f}")
    if acc < MIN_ACC:
        sys.exit(f"accuracy {acc:.3f} below {MIN_ACC}")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(clf.coefs_[0].T))
        model[1].bias.copy_(torch.from_numpy(clf.intercepts_[0]))
        model[3].weight.copy_(torch.from_numpy(clf.coefs_[1].T))
        model[3].bias.copy_(torch.from_numpy(clf.intercepts_[1]))
    model.eval()
    images = torch.from_numpy(x_test[:N_SAMPLES]).float().view(-1, 1, 8, 8)
    with torch.no_grad():
        logits = model(images).numpy()
    reference = clf.predict_proba(x_test[:N_SAMPLES])
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    if not np.allclose(ours, reference, atol=1e-5):
        sys.exit("the converted model disagrees with scikit-learn")
    batch = torch.export.Dim("batch", min=1, max=65536)
    ep = torch.export.export(model, (images[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(HERE / "digits_tanh_mlp.pt2"))
    loaded = torch.export.load(str(HERE / "digits_tanh_mlp.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-6)
    torch.save(images.contiguous(), HERE / "digits8.pt")
    print(f"wrote digits_tanh_mlp.pt2 and digits8.pt ({N_SAMPLES} images)")


if __name__ == "__main__":
    main()
