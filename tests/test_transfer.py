import torch
from conftest import tiny_config

from vitbook import transfer
from vitbook.model import ViT


def test_open_set_task_labels_and_held_out_unknowns():
    sets = transfer.open_set(fashion_test=100)
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
    assert transfer.relabel(ds).labels.tolist() == [0, 1, 2, 2, 0]


def test_unknown_scores_rank_an_unsure_prediction_above_a_sure_one():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    s = transfer.unknown_scores(logits)
    assert s["p(unknown)"].argmax() == 1
    assert s["1 - max p(known)"][0] < s["1 - max p(known)"][2]


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
