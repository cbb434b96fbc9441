"""Frozen features, read out (budgetssl/readout/): DINO's weighted k-NN against the formula written out
here, the linear heads' protocol (AdamW per head as torch's, ~100% on separable data, converged, the lr
kept by the held-out part), and the record fields of a random init and of a pretrained run."""

from __future__ import annotations

import math

import pytest
import torch

from budgetssl.backbones.backbone import build_backbone
from budgetssl.data.base import WholeBatches, build_dataset
from budgetssl.readout.classify import CHUNK, classify, evenly_spaced, labelled, view, why_not
from budgetssl.readout.knn import knn_accuracy, knn_predict
from budgetssl.readout.linear import (
    Classification,
    LinearSettings,
    Segmentation,
    StackedAdamW,
    fit_linear,
    predict,
)
from budgetssl.transfer.metrics import SegmentationScore
from conftest import TINY, TINY_BUDGET, run_config, run_in_process, small, summary
from layouts import write_imagenet

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["readout.max_epochs=40"]  # the record's fields, not the scores' quality, are checked here


def knn_by_hand(bank, bank_labels, queries, num_classes, k, temperature):
    """eval_knn.py's rule, one query at a time in plain Python: cosine similarity to each bank image, the
    k most similar, each voting exp(sim / T) for its class, the largest total wins (lowest class on ties)."""
    predictions = []
    for q in queries.tolist():
        qn = math.sqrt(sum(v * v for v in q))
        sims = []
        for j, b in enumerate(bank.tolist()):
            bn = math.sqrt(sum(v * v for v in b))
            sims.append((sum(x * y for x, y in zip(q, b, strict=True)) / (qn * bn), j))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, j in sims[:k]:
            votes[int(bank_labels[j])] += math.exp(sim / temperature)
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return predictions


def test_knn_equals_the_rule_written_out():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(200, 8, generator=g)
    labels = torch.randint(0, 4, (200,), generator=g)
    queries = torch.randn(60, 8, generator=g) + 0.5 * bank[:60]  # near some bank images
    for k, t in [(20, 0.07), (5, 0.5), (1, 0.07)]:
        got = knn_predict(bank, labels, queries, 4, k, t, chunk=7).tolist()
        assert got == knn_by_hand(bank, labels, queries, 4, k, t)
    truth = torch.tensor(knn_by_hand(bank, labels, queries, 4, 20, 0.07))
    truth[:10] = (truth[:10] + 1) % 4  # ten wrong
    assert knn_accuracy(bank, labels, queries, truth, 4) == pytest.approx(100 * 50 / 60)


def test_knn_weights_votes_by_similarity_not_count():
    # Two bank images of class 1 close to the query, three of class 0 farther: 1 wins with k = 5.
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.3, 1.0], [0.2, 1.0], [0.25, 1.0]])
    labels = torch.tensor([1, 1, 0, 0, 0])
    assert knn_predict(bank, labels, torch.tensor([[1.0, 0.02]]), 2, k=5, temperature=0.07).item() == 1
    # At a high temperature the votes weigh nearly alike and the majority wins.
    assert knn_predict(bank, labels, torch.tensor([[1.0, 0.02]]), 2, k=5, temperature=100.0).item() == 0


def test_stacked_adamw_is_torch_adamw_per_head():
    g = torch.Generator().manual_seed(1)
    lrs = [1e-3, 1e-2, 1e-1]
    start = torch.randn(3, 4, 5, generator=g)
    stacked = start.clone().requires_grad_(True)
    optimizer = StackedAdamW([stacked], torch.tensor(lrs), weight_decay=0.05)
    singles = [start[i].clone().requires_grad_(True) for i in range(3)]
    torch_opts = [
        torch.optim.AdamW([p], lr=lr, weight_decay=0.05) for p, lr in zip(singles, lrs, strict=True)
    ]
    target = torch.randn(4, 5, generator=g)
    for _ in range(20):
        stacked.grad = None
        ((stacked - target) ** 2).sum().backward()
        optimizer.step()
        for p, opt in zip(singles, torch_opts, strict=True):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
    for i in range(3):
        assert torch.allclose(stacked[i], singles[i], atol=1e-6)
    before = stacked.detach().clone()
    optimizer.stop(1)
    stacked.grad = torch.ones_like(stacked)
    optimizer.step()
    assert torch.equal(stacked[1], before[1]) and not torch.equal(stacked[0], before[0])


def separable(n: int, d: int, classes: int, seed: int, noise: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + noise * torch.randn(n, d, generator=g), y


def test_the_linear_classifier_separates_separable_data_and_converges():
    x, y = separable(1200, 16, 5, seed=2)
    settings = LinearSettings(lrs=(1e-2, 1e-1), max_epochs=300, batch_size=256)
    fit = fit_linear(x[:1000], y[:1000], 5, Classification(), settings)
    accuracy = float((predict(fit, x[1000:]).argmax(dim=1) == y[1000:]).float().mean() * 100)
    assert accuracy == 100.0
    p = fit.protocol
    assert p["converged"] and p["epochs"] < 300 and p["final_loss"] < 0.05
    assert (p["fit_images"], p["held_out_images"]) == (800, 200)
    assert fit.steps == fit.epochs * fit.steps_per_epoch and fit.steps_per_epoch == 3
    # Counted by the project's counter: forward (2 B K D per head) and the weights' gradient (as much again).
    assert fit.flops_per_step == 2 * (2 * 256 * 5 * 16 * 2)
    assert fit.eval_flops_per_epoch == 2 * 200 * 5 * 16 * 2


def test_the_lr_is_chosen_by_the_held_out_part():
    """Overlapping classes, lrs from far too small to large: they score differently on the held-out part,
    and the kept lr is the one that scores best there (the smallest of equal scores)."""
    x, y = separable(600, 8, 3, seed=3, noise=2.0)
    settings = LinearSettings(lrs=(1e-4, 3e-2, 1.0), max_epochs=60, batch_size=128, patience=5)
    fit = fit_linear(x, y, 3, Classification(), settings, seed=0)
    scores = fit.protocol["held_out_scores"]
    assert len(scores) == 3 and len(set(scores)) > 1  # the lrs score differently ...
    assert fit.protocol["lr"] == settings.lrs[max(range(3), key=lambda i: (scores[i], -i))]  # ... best kept
    # The same fit with another split of the same images is another held-out part: the scores move.
    other = fit_linear(x, y, 3, Classification(), settings, seed=1)
    assert other.protocol["held_out_scores"] != scores


def test_the_segmentation_loss_is_the_segmenters_cross_entropy():
    """The probe trains on what Segmenter.forward computes: logits upsampled bilinearly to the mask,
    cross-entropy over the labelled pixels."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 6, 4, 4, generator=g)  # (L, n, K, h, w)
    masks = torch.randint(0, 6, (3, 16, 16), generator=g)
    masks[0, :2] = 255
    task = Segmentation(6, 255)
    for i in range(2):
        up = torch.nn.functional.interpolate(logits[i], size=(16, 16), mode="bilinear", align_corners=False)
        want = torch.nn.functional.cross_entropy(up, masks, ignore_index=255)
        assert task.loss(logits, masks)[i] == pytest.approx(float(want), rel=1e-5)


def test_images_are_spread_evenly_over_a_split():
    assert evenly_spaced(10, 4) == [0, 2, 5, 7] and evenly_spaced(3, 5) == [0, 1, 2]


def test_a_read_outs_images_from_whole_batches_are_each_samples_view():
    """The synthetic set gives the read-out its images a chunk at a time (WholeBatches): the same images,
    views and labels, in the same order, as sample by sample, over more than one chunk."""
    dataset = build_dataset(run_config(*TINY, "dataset.num_train=1024").dataset, "train")
    assert isinstance(dataset, WholeBatches)
    transform = view(dataset.info, 16)
    images, labels = labelled(dataset, 600, transform)
    indices = evenly_spaced(len(dataset), 600)
    assert len(indices) == 600 > CHUNK
    assert torch.equal(images, torch.stack([transform(dataset[i]["image"]) for i in indices]))
    assert labels.tolist() == [int(dataset[i]["label"]) for i in indices]


def test_a_random_init_records_its_readout(tmp_path):
    assert run_in_process("budgetssl-transfer", *TINY, *FAST, folder=tmp_path) == 0
    r = summary(tmp_path)
    assert r["method"] == "random_init" and r["readout_dataset"] == "synthetic"
    assert 0 <= r["knn_accuracy"] <= 100 and 0 <= r["linear_accuracy"] <= 100
    # TINY's pretraining split holds 256 scenes; the held-out split 512 (both below the defaults).
    assert (r["readout_train_images"], r["readout_test_images"], r["readout_classes"]) == (256, 512, 5)
    assert (r["knn_k"], r["knn_temperature"]) == (20, 0.07)
    protocol = r["linear_protocol"]
    assert protocol["lr"] in protocol["lrs"] and protocol["fit_images"] + protocol["held_out_images"] == 256
    assert all(r[k] > 0 for k in ("readout_feature_seconds", "knn_seconds", "linear_seconds"))
    assert r["readout_note"] is None


def test_a_pretrained_run_records_its_readout_and_an_unlabelled_one_says_why(tmp_path):
    overrides = [*TINY, *FAST, *small("mae"), TINY_BUDGET]
    assert run_in_process("budgetssl-run", *overrides, folder=tmp_path / "mae") == 0
    r = summary(tmp_path / "mae")
    assert r["method"] == "mae" and r["steps"] > 0
    assert 0 <= r["knn_accuracy"] <= 100 and 0 <= r["linear_accuracy"] <= 100
    off = [*TINY, "readout.classify=false"]
    assert run_in_process("budgetssl-transfer", *off, folder=tmp_path / "off") == 0
    r = summary(tmp_path / "off")
    assert r["knn_accuracy"] is None and r["linear_accuracy"] is None
    assert r["readout_note"] == "readout.classify=false" and r["miou"] is not None


def test_the_probes_upsampling_is_torchs_bilinear_resize():
    logits = torch.randn(2, 3, 6, 4, 5)
    got = Segmentation(6, 255).upsampled(logits, (16, 20))
    want = torch.nn.functional.interpolate(
        logits.reshape(6, 6, 4, 5), size=(16, 20), mode="bilinear", align_corners=False
    ).view(2, 3, 6, 16, 20)
    assert torch.allclose(got, want, atol=1e-6)


def test_the_probes_held_out_score_is_the_miou_of_each_pixels_argmax():
    """Logits with many equal maxima (rounded) and a NaN: each head's score is the mIoU (the transfer's
    SegmentationScore) of torch.argmax's classes, the first maximum taken, as the transfer's evaluation
    takes it."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randint(0, 3, (3, 4, 6, 4, 4), generator=g).float()  # (L, n, K, h, w): ties everywhere
    logits[1, 0, 2, 0, 0] = float("nan")
    masks = torch.randint(0, 6, (4, 8, 8), generator=g)
    masks[0, :2] = 255
    task = Segmentation(6, 255)
    up = task.upsampled(logits, (8, 8))
    for i, got in enumerate(task.score(logits, masks).tolist()):
        score = SegmentationScore(6, 255)
        score.update(up[i].argmax(dim=1), masks)
        assert got == pytest.approx(score.compute()["miou"], rel=1e-6)  # the score is a float32


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["dataset=image_folder", "dataset.root=/tmp"], "dataset 'image_folder' has no labels"),
        (["dataset=coco", "dataset.root=/tmp"], "has no labels (set dataset.labels=true"),
        (["dataset=webdataset", "dataset.shards=/tmp/x.tar"], "has no labels (set dataset.label_key"),
    ],
)
def test_data_without_labels_gives_null_scores_and_says_why(overrides, says):
    run = run_config(*overrides, "method=cpu/mae")
    section = classify(build_backbone(run.backbone, 16), run.dataset, run.readout, torch.device("cpu"))
    assert section.knn_accuracy is None and section.linear_accuracy is None
    assert section.readout_note is not None and says in section.readout_note
    assert why_not(run_config("dataset=coco", "dataset.root=/tmp", "dataset.labels=true").dataset) is None


def test_the_imagenet_layout_is_read_out_from_its_train_and_val_folders(tmp_path):
    write_imagenet(tmp_path / "in", classes=3, per_class=10, val_per_class=4, size=(20, 24))
    run = run_config(
        "dataset=imagenet1k", f"dataset.root={tmp_path / 'in'}", "dataset.image_size=16",
        "readout.train_images=6", "readout.max_epochs=20",
    )  # fmt: skip
    torch.manual_seed(0)
    section = classify(build_backbone(run.backbone, 16), run.dataset, run.readout, torch.device("cpu"))
    assert section.readout_note is None and section.readout_dataset == "imagenet1k"
    assert (section.readout_train_images, section.readout_test_images, section.readout_classes) == (6, 12, 3)
    assert 0 <= section.knn_accuracy <= 100 and 0 <= section.linear_accuracy <= 100
    assert section.knn_k == 6  # fewer bank images than k: all of them vote
