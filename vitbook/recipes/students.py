"""Distillation (chapter 12): a small CNN teacher, and small ViT students that see the labels of
only 200 digits.

* ``student-plain``: the 200 labelled digits, cross-entropy;
* ``student-soft``, ``student-hard-token``: the same 200 digits, with the teacher's soft
  targets (Hinton et al.) or DeiT's hard distillation through a distillation token;
* ``student-soft-unlabelled``: the setting where distillation is known to pay: the teacher's
  soft targets on all 60,000 training images, of which the student has labels for 200;
* ``student-soft-unlabelled-untrained-teacher``: the same with the teacher's *untrained*
  network, the control: what the student gains must come from what the teacher learned.

Every student: the same architecture, recipe, number of steps and augmentation."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import data, zoo
from ..distill import DistilledViT, SmallCNN, student_loss_fn
from ..loops import model_device
from ..model import ViT, ViTConfig
from ..train import evaluate, fit
from ..transforms import DigitAugment
from .classifiers import MNIST_RECIPE, SEED, mnist_config, mnist_sets, supervised

CNN_RECIPE = replace(MNIST_RECIPE, epochs=2, lr=2e-3, label_smoothing=0.0)
STUDENT_LABELS = 20  # labelled training digits per class the students learn from (200 in all)
STUDENT_STEPS = 600
# No label smoothing for any student: the distillation losses use plain cross-entropy on the
# labels, so the plain student does too, and only the target differs between them. The recipe
# is given in steps: every student takes 600 optimizer steps, whatever its training set's size.
STUDENT_RECIPE = replace(MNIST_RECIPE, label_smoothing=0.0)


def student_config(**overrides) -> ViTConfig:
    """The student: three quarters of the width and two thirds of the depth of the chapter-4 ViT
    (about 40% of its parameters)."""
    return mnist_config(**{"dim": 48, "depth": 2, "heads": 3, "mlp_dim": 96, **overrides})


def student_train_set():
    """The 200 labelled digits the students see (the teacher was trained on all 60,000)."""
    return data.few_per_class(data.mnist("train"), STUDENT_LABELS, seed=SEED)


UNLABELLED = 10  # the label of an image the student has no label for (masked in the loss)


def student_sets():
    """The students' training set, and the test set."""
    return student_train_set(), data.mnist("test")


def partly_labelled_sets():
    """All 60,000 training images; only the 200 of `student_train_set` keep their label, the
    others are marked `UNLABELLED` (the loss reads the teacher alone there). And the test set."""
    full = data.mnist("train")
    keep = torch.zeros(len(full), dtype=torch.bool)
    keep[data.few_per_class_indices(full, STUDENT_LABELS, seed=SEED)] = True  # the same 200
    labels = torch.where(keep, full.labels, torch.full_like(full.labels, UNLABELLED))
    partly = data.ImageDataset(full.images, labels, name="mnist-train-200-labelled")
    return partly, data.mnist("test")


def distilled(network, model: zoo.Model) -> dict:
    """Train a student on the declaration's data for `STUDENT_STEPS` steps, with the teacher of
    ``model.options`` (its trained network, or its untrained one for the control)."""
    device = model_device(network)
    teacher_name, kind = model.options["teacher"], model.options["kind"]
    teacher = (
        zoo.get(teacher_name, device=device)
        if model.options.get("teacher_trained", True)
        else zoo.untrained(teacher_name).to(device)
    )
    train_set, test_set = model.data()
    recipe = steps_recipe(model.recipe, len(train_set))
    loss_fn = student_loss_fn(teacher, kind, unlabelled=UNLABELLED)
    # no evaluation after every epoch: 200 images make 600 epochs of one step each
    fit(network, train_set, None, recipe, loss_fn=loss_fn, augmentation=model.augmentation)
    return {"test_accuracy": evaluate(network, test_set)["accuracy"]}


def plain_student(network, model: zoo.Model) -> dict:
    """The plain student: `STUDENT_STEPS` steps of cross-entropy on the labelled digits."""
    train_set, test_set = model.data()
    recipe = steps_recipe(model.recipe, len(train_set))
    fit(network, train_set, None, recipe, augmentation=model.augmentation)  # evaluated once, below
    return {"test_accuracy": evaluate(network, test_set)["accuracy"]}


def steps_recipe(recipe, n: int):
    """``recipe`` stretched to `STUDENT_STEPS` steps over ``n`` images, warm-up a tenth of them:
    every student trains equally long, whatever the size of its training set."""
    epochs = STUDENT_STEPS / (n // recipe.batch_size)
    return replace(recipe, epochs=epochs, warmup_epochs=epochs / 10)


zoo.register(
    zoo.Model(
        "mnist-cnn", "a small CNN teacher for chapter 12", SmallCNN, None, CNN_RECIPE,
        supervised, data=mnist_sets, augmentation=DigitAugment(), minutes=1.5,
    )
)  # fmt: skip

# name -> (kind of distillation, data, teacher trained?, a distillation token?)
STUDENTS = {
    "student-plain": ("none", student_sets, True, False),
    "student-soft": ("soft", student_sets, True, False),
    "student-hard-token": ("hard", student_sets, True, True),
    "student-soft-unlabelled": ("soft", partly_labelled_sets, True, False),
    "student-soft-unlabelled-untrained-teacher": ("soft", partly_labelled_sets, False, False),
}
for _name, (_kind, _sets, _trained, _token) in STUDENTS.items():
    _teacher = (
        "" if _kind == "none" else (" from the CNN" if _trained else " from the CNN untrained")
    )
    _where = (
        "60,000 images, 200 labelled" if _sets is partly_labelled_sets else "200 labelled digits"
    )
    zoo.register(
        zoo.Model(
            _name,
            f"a small ViT student, {_kind} distillation{_teacher}{', distillation token' if _token else ''}; {_where}",
            DistilledViT if _token else ViT,
            student_config(),
            STUDENT_RECIPE,
            plain_student if _kind == "none" else distilled,
            data=_sets,
            augmentation=DigitAugment(),
            options={} if _kind == "none" else {"teacher": "mnist-cnn", "kind": _kind, "teacher_trained": _trained},
            depends=() if _kind == "none" else ("mnist-cnn",),
            minutes=0.5,
        )
    )  # fmt: skip
