"""The linear-probe protocol's refit: on train + val for the protocol, on train only when val must stay unseen."""
import numpy as np

from forgetbench.evaluate.probe import fit_linear_probe, normalize


def test_without_the_refit_the_probe_never_sees_the_validation_labels():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([3, 0], 0.3, (40, 2)), rng.normal([0, 3], 0.3, (40, 2))])
    y = np.repeat([0, 1], 40)
    train, val = (x, y), (x, 1 - y)  # the same images, every validation label wrong
    unseen, C, val_accs = fit_linear_probe(train, val, C_grid=(1.0,), refit_with_val=False)
    assert (unseen.predict(normalize(x)) == y).mean() == 1.0 and val_accs == {1.0: 0.0}
    refit, _, _ = fit_linear_probe(train, val, C_grid=(1.0,))
    assert (refit.predict(normalize(x)) == y).mean() < 0.9  # the protocol's refit learnt the contradicting labels
