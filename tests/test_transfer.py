import torch
from conftest import tiny_config

from vitbook import recipes, transfer
from vitbook.model import ViT


def test_open_set_task_labels_and_held_out_unknowns():
    sets = recipes.open_set(fashion_test=100)
    tr = sets["train"]
    counts = torch.bincount(tr.labels, minlength=3)
    assert counts[2] == (counts[0] + counts[1]) // 2  # as many unknowns as an average known digit
    assert tr.classes == ("3", "8", "unknown")
    assert (sets["novel_digits"].labels == 2).all() and len(sets["novel_fashion"]) == 100
    assert len(sets["novel_digits"]) == 958 + 1028 + 1009  # every test 6, 7 and 9
    assert (sets["test"].labels < 2).sum() == 1010 + 974  # every test 3 and 8


def test_relabel_maps_known_digits_and_everything_else_to_unknown():
    from vitbook import data

    ds = data.ImageDataset(torch.zeros(5, 28, 28, dtype=torch.uint8), torch.tensor([3, 8, 0, 6, 3]))
    assert transfer.relabel(ds, (3, 8)).labels.tolist() == [0, 1, 2, 2, 0]


def test_unknown_scores_rank_an_unsure_prediction_above_a_sure_one():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    s = transfer.unknown_scores(logits)
    assert s["p(unknown)"].argmax() == 1
    assert s["max-softmax"][0] < s["max-softmax"][2]


def test_max_softmax_score_ignores_the_unknown_logit():
    # Hendrycks & Gimpel's baseline: a softmax over the known classes' logits only, so the
    # unknown class's logit, whatever it is, must not move it (it moves p(unknown)).
    logits = torch.tensor([[2.0, 0.5, -3.0], [0.2, 0.1, 0.0]])
    louder = logits.clone()
    louder[:, 2] += 10.0
    a, b = transfer.unknown_scores(logits), transfer.unknown_scores(louder)
    torch.testing.assert_close(a["max-softmax"], b["max-softmax"])
    assert (b["p(unknown)"] > a["p(unknown)"]).all()
    expected = 1 - logits[:, :2].softmax(dim=1).max(dim=1).values
    torch.testing.assert_close(a["max-softmax"], expected)
    # the unknown class may sit in any column
    moved = transfer.unknown_scores(logits[:, [2, 0, 1]], unknown_index=0)
    torch.testing.assert_close(moved["max-softmax"], expected)


def test_finetune_replaces_the_head_and_leaves_the_original_alone():
    from vitbook import data

    torch.manual_seed(0)
    model = ViT(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = data.few_per_class(data.mnist("test"), 8, classes=range(3))
    tuned, history = transfer.finetune(model, small, num_classes=3, steps=4, batch_size=8)
    assert tuned.head.out_features == 3 and tuned.cfg.num_classes == 3
    assert len(history.step_loss) == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_label_budget_is_class_balanced():
    from vitbook import data

    few = transfer.label_budget(data.mnist("test"), 0.01)
    assert torch.bincount(few.labels).tolist() == [10] * 10


def test_probe_head_gives_the_probes_logits_on_raw_features():
    from vitbook import data
    from vitbook.metrics import extract_features, fit_linear_probe

    torch.manual_seed(0)
    enc = ViT(tiny_config())
    ds = data.ImageDataset(
        torch.randint(0, 256, (60, 1, 28, 28), dtype=torch.uint8), torch.arange(60) % 3
    )
    head = transfer.probe_head(enc, ds, num_classes=3)
    f, y = extract_features(enc, ds)
    w, b, mean, std = fit_linear_probe(f, y, 3)
    torch.testing.assert_close(head(f), (f - mean) / std @ w + b, atol=1e-4, rtol=1e-4)


def test_finetune_from_probe_starts_from_a_copy_of_the_probe_and_leaves_the_encoder_alone():
    from vitbook import data

    torch.manual_seed(0)
    enc = ViT(tiny_config())
    ds = data.ImageDataset(
        torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8), torch.arange(16) % 3
    )
    head = transfer.probe_head(enc, ds, num_classes=3)
    probe = {k: v.clone() for k, v in head.state_dict().items()}
    tuned = transfer.finetune_from_probe(enc, ds, steps=1, head=head, batch_size=8)
    assert tuned.head is not head and tuned.cfg.num_classes == tuned.head.out_features == 3
    # the probe was copied, not trained
    assert all(torch.equal(probe[k], v) for k, v in head.state_dict().items())
    assert enc.cfg.num_classes == enc.head.out_features == 10
