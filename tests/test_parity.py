"Parity with reference libraries: scikit-learn metrics, PyTorch losses, and one preprocessing for training and serving."

import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from sklearn import metrics as skm
from cvbench.evaluate.classification import classification_metrics
from cvbench.evaluate.predict import make_ledger
from cvbench.data.samples import Samples
from cvbench.data.formats import read_imagefolder
from cvbench.transforms import PreprocessSpec
from cvbench.train.learner import build_dataloaders
from cvbench.models import create_model, read_state_dict, bundled_weights


@pytest.mark.parametrize('seed', range(5))
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 500, 7
    classes = [f'c{i}' for i in range(k)]
    p = rng.dirichlet(np.ones(k) * 0.5, n)
    y = rng.integers(0, k, n)
    yhat = p.argmax(1)
    led = pd.DataFrame(dict(image_id=range(n), label=[classes[i] for i in y], pred=[classes[i] for i in yhat]))
    led[[f'prob_{c}' for c in classes]] = p
    m = classification_metrics(led, classes, top_k=[2, 3])
    assert abs(m.accuracy - skm.accuracy_score(y, yhat)) < 1e-12
    for kk in (2, 3):
        assert abs(m.top_k[kk] - skm.top_k_accuracy_score(y, p, k=kk, labels=range(k))) < 1e-12
    for avg in ('macro', 'weighted'):  # macro over the classes present, scikit-learn's default
        ref = skm.precision_recall_fscore_support(y, yhat, average=avg, zero_division=0)
        assert np.allclose([getattr(m, avg)[x] for x in ('precision', 'recall', 'f1')], ref[:3], atol=1e-12, rtol=0)
    np.testing.assert_array_equal(m.confusion, skm.confusion_matrix(y, yhat, labels=range(k)))
    np.testing.assert_allclose(
        m.per_class.f1, skm.f1_score(y, yhat, average=None, labels=range(k), zero_division=0), atol=1e-12, rtol=0
    )


def test_ledger_matches_torch(tmp_path):
    torch.manual_seed(0)
    n, k = 40, 5
    classes = [str(i) for i in range(k)]
    df = pd.DataFrame(
        dict(
            image_id=[str(i) for i in range(n)],
            path=[f'{i}.png' for i in range(n)],
            split='valid',
            label=[str(i % k) for i in range(n)],
        )
    )
    logits = torch.randn(n, k) * 3
    led = make_ledger(Samples(df, tmp_path, classes=classes), logits)
    y = torch.tensor([i % k for i in range(n)])
    np.testing.assert_allclose(
        led.loss, torch.nn.functional.cross_entropy(logits.double(), y, reduction='none'), atol=1e-12
    )
    np.testing.assert_allclose(led.filter(like='prob_').to_numpy(), torch.softmax(logits.double(), 1), atol=1e-12)


@pytest.mark.parametrize('resize', ['squash', 'crop', 'pad'])
def test_training_pipeline_equals_serving_preprocessing(tmp_path, resize):
    "fastai's validation batches equal the spec applied image by image, for odd sizes and modes."
    rng = np.random.default_rng(0)
    for c in ('a', 'b'):
        (tmp_path / c).mkdir()
    imgs = [
        Image.fromarray(rng.integers(0, 255, (23, 41, 3), np.uint8)),
        Image.fromarray(rng.integers(0, 255, (50, 17), np.uint8), 'L'),
        Image.fromarray(rng.integers(0, 255, (30, 30, 4), np.uint8), 'RGBA'),
        Image.fromarray(rng.integers(0, 255, (9, 64, 3), np.uint8)),
    ]
    for i, im in enumerate(imgs * 2):
        im.save(tmp_path / 'ab'[i % 2] / f'{i}.png')
    s = read_imagefolder(tmp_path)
    s = Samples(s.df.assign(split='valid'), s.root, classes=s.classes)
    s.df.loc[0, 'split'] = 'train'
    spec = PreprocessSpec(size=(20, 28), resize=resize)
    dls = build_dataloaders(s, spec, bs=16, augment=False, device='cpu')
    xb, _ = next(iter(dls.valid))
    ref = torch.stack([spec(p) for p in s.subset('valid').paths()])
    torch.testing.assert_close(xb.cpu(), ref, atol=1e-5, rtol=0)


def test_bundled_pretrained_weights_load():
    m = create_model('tf_efficientnet_lite0', 3, pretrained='bundled')
    ref = read_state_dict(bundled_weights('tf_efficientnet_lite0'))
    torch.testing.assert_close(m.blocks[6][0].conv_pwl.weight.detach(), ref['_blocks.15._project_conv.weight'])
