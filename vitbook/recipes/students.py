"""Distillation (chapter 12): a small CNN teacher, and small ViT students trained on 5,000
labelled digits several ways: alone, from the teacher's soft or hard labels, with and without
a distillation token (`vitbook.distill`)."""

from __future__ import annotations

from dataclasses import replace

from .. import data, zoo
from ..distill import DistilledViT, SmallCNN, student_loss_fn
from ..loops import model_device
from ..model import ViT, ViTConfig
from ..train import evaluate, fit, seed_everything
from ..transforms import DigitAugment
from .classifiers import MNIST_RECIPE, SEED, entry_recipe, mnist_config

CNN_RECIPE = replace(MNIST_RECIPE, epochs=2, lr=2e-3, label_smoothing=0.0)
STUDENT_LABELS = 500  # labelled training digits per class the students learn from
STUDENT_STEPS = 600
# No label smoothing for any student: the distillation losses use plain cross-entropy on the
# labels, so the plain student does too, and only the target differs between them.
STUDENT_RECIPE = replace(
    MNIST_RECIPE,
    epochs=round(STUDENT_STEPS / (10 * STUDENT_LABELS // 128)),
    warmup_epochs=1.0,
    label_smoothing=0.0,
)


def student_config(**overrides) -> ViTConfig:
    """The student: three quarters of the width and two thirds of the depth of the chapter-4 ViT
    (about 40% of its parameters)."""
    return mnist_config(**{"dim": 48, "depth": 2, "heads": 3, "mlp_dim": 96, **overrides})


def student_train_set():
    """The 5,000 labelled digits the students see (the teachers were trained on all 60,000)."""
    return data.few_per_class(data.mnist("train"), STUDENT_LABELS, seed=SEED)


def build_cnn():
    seed_everything(SEED)
    return SmallCNN()


def train_cnn(model) -> dict:
    test_set = data.mnist("test")
    fit(model, data.mnist("train"), test_set, CNN_RECIPE, augmentation=DigitAugment())
    return {"test_accuracy": evaluate(model, test_set)["accuracy"]}


# name -> (teacher, kind of distillation, with a distillation token)
STUDENTS = {
    "student-plain": (None, "none", False),
    "student-soft": ("mnist-cnn", "soft", False),
    "student-hard": ("mnist-cnn", "hard", False),
    "student-soft-token": ("mnist-cnn", "soft", True),
    "student-hard-token": ("mnist-cnn", "hard", True),
    "student-hard-token-vit": ("mnist-vit", "hard", True),
}


def student_builder(token: bool):
    def build():
        seed_everything(SEED)
        return DistilledViT(student_config()) if token else ViT(student_config())

    return build


def student_trainer(teacher_name, kind):
    def train_student(model) -> dict:
        device = model_device(model)
        teacher = zoo.get(teacher_name, device=device) if teacher_name else None
        loss_fn = student_loss_fn(teacher, kind) if teacher is not None else None
        test_set = data.mnist("test")
        fit(
            model, student_train_set(), test_set, STUDENT_RECIPE, loss_fn=loss_fn,
            augmentation=DigitAugment(),
        )  # fmt: skip
        return {"test_accuracy": evaluate(model, test_set)["accuracy"]}

    return train_student


zoo.register(
    zoo.Entry(
        name="mnist-cnn",
        description="a small CNN teacher for chapter 12",
        build=build_cnn,
        train=train_cnn,
        recipe=CNN_RECIPE.to_dict(),
        modules=("model", "train", "data", "transforms", "distill"),
        minutes=1.5,
    )
)
for _name, (_teacher, _kind, _token) in STUDENTS.items():
    zoo.register(
        zoo.Entry(
            name=_name,
            description=f"a small ViT student, {_kind} distillation{' from ' + _teacher if _teacher else ''}{', distillation token' if _token else ''}",
            build=student_builder(_token),
            train=student_trainer(_teacher, _kind),
            recipe=entry_recipe(
                student_config(),
                STUDENT_RECIPE,
                teacher=_teacher,
                kind=_kind,
                token=_token,
                labels_per_class=STUDENT_LABELS,
            ),  # fmt: skip
            modules=("model", "train", "data", "transforms", "distill"),
            depends=(_teacher,) if _teacher else (),
            minutes=0.7,
        )
    )
