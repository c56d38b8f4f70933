"""Method A on a typed data folder: one class per tumour type plus "no tumour".

    python launch.py --config=configs/multiclass_search.py --workdir=runs/types
    python launch.py --config=configs/multiclass_search.py \
        --config.data.dir=/data/brain_tumour_types --workdir=runs/types   # your own folder
    python launch.py --config=configs/multiclass_search.py:quick ...     # tiny, for tests

Classes are the data folder's sub-folders (sorted) unless data.classes names them; the
head is GAP -> Dense -> Dropout -> Dense(C) with a softmax. `data.negative_classes` names
the classes that mean "no tumour": the report then adds the binary view (P(tumour) =
1 - P(no tumour)), `predict` writes p_tumour and a decision, and `evaluate` can check the
model on a yes/no folder. Without data.dir: synthetic phantoms of three lesion types and
no tumour (SYNTHETIC everywhere). Weights: EfficientNet-Lite0, shipped in a pip package.
"""

from bt_jax.config import parse_arg
from configs import quickstart


def get_config(arg: str = ""):
    c = quickstart.get_config(arg)  # Lite0, its search space and quick sizes
    arg = parse_arg(arg, quick=False)
    c.name = "multiclass_search"
    c.data.classes = ("glioma", "meningioma", "no_tumour", "pituitary")  # () = the folder's
    c.data.positive = ""
    c.data.negative_classes = ("no_tumour",)
    c.augment.balance = "augment2a"  # each class augmented up to the largest
    if arg.quick:
        c.data.phantoms.n_per_class = 12
        c.search.trials = 2
        c.eval.bootstrap = 100
    return c
