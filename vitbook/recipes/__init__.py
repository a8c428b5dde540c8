"""The book's experiments: its model configurations, training recipes and zoo entries.

Importing this package registers every trained model the chapters share with the cache in
`vitbook.zoo`, so that ``zoo.get("mnist-vit")`` can train it on first use. The library modules
(`vitbook.model`, `vitbook.train`, `vitbook.data`, ...) know nothing of these experiments; this
package imports them and the zoo, never the reverse.

* `classifiers`: the chapter-4 MNIST ViT and its variants, the Fashion-MNIST "pretrained" model,
  and the chapter-8 task (two digits plus "unknown");
* `selfsup`: MAE and I-JEPA pretraining (chs. 10-11); `simmim_dino`: SimMIM and DINO, and
  DINO's two collapses (chs. 10 and 15); `ssl_table`: the protocol that compares the encoders;
* `students`: the CNN teacher and the distilled ViT students (ch. 12);
* `synthetic_digits`: the ViT trained on synthetic, real and mixed digits (ch. 13);
* `benchmarks`: the best-accuracy recipes that ``python -m vitbook.bench`` runs.
"""

from .classifiers import (  # noqa: F401
    FASHION_RECIPE,
    KNOWN,
    MNIST_RECIPE,
    OPEN_SET_CLASSES,
    SEED,
    UNKNOWN_HELD_OUT,
    UNKNOWN_TRAIN,
    mnist_config,
    open_set,
)
from .selfsup import IJEPA_ARCH, IJEPA_RECIPE, MAE_ARCH, MAE_RECIPE, ssl_config  # noqa: F401
from .simmim_dino import (  # noqa: F401
    DINO_ARCH,
    DINO_LONG,
    DINO_RECIPE,
    SIMMIM_ARCH,
    SIMMIM_RECIPE,
    dino_config,
)
from .ssl_table import SSL_FINETUNE, SSL_FINETUNE_LR, evaluate_encoder  # noqa: F401
from .students import STUDENTS, student_config, student_train_set  # noqa: F401
from .synthetic_digits import FEW_REAL, SOURCE_MODELS, SOURCES  # noqa: F401
