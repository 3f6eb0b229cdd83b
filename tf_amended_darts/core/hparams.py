"""Named defaults, each with the source it comes from.

Sources:
  [darts] Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search",
    ICLR 2019, and its reference code (github.com/quark0/darts,
    `cnn/train_search.py`, `cnn/architect.py`, `cnn/train.py`).
  [amended] "Stabilizing DARTS with Amended Gradient Estimation on
    Architectural Parameters" (the paper in ../shared/paper), see
    ../shared/method.md for the clean notation.
"""

# --- Weight optimiser (search) --------------------------------------------
WEIGHT_LR = 0.025  # [darts] train_search.py --learning_rate
WEIGHT_LR_MIN = 0.001  # [darts] train_search.py --learning_rate_min
WEIGHT_MOMENTUM = 0.9  # [darts] train_search.py --momentum
WEIGHT_DECAY = 3e-4  # [darts] train_search.py --weight_decay (coupled L2)
GRAD_CLIP_NORM = 5.0  # [darts] train_search.py --grad_clip (global norm)

# --- Architecture optimiser -----------------------------------------------
ARCH_LR = 3e-4  # [darts] train_search.py --arch_learning_rate
ARCH_BETA_1 = 0.5  # [darts] architect.py Adam betas=(0.5, 0.999)
ARCH_BETA_2 = 0.999  # [darts] architect.py
ARCH_WEIGHT_DECAY = 1e-3  # [darts] train_search.py --arch_weight_decay
ADAM_EPSILON = 1e-8  # torch.optim.Adam default, used by [darts]

# --- Architecture-gradient estimators ------------------------------------
ETA = 0.1  # [amended] section 3.1, amending coefficient eta
# [darts] eq. 8 / architect.py `R = r / _concat(vector).norm()`, r = 1e-2;
# [amended] appendix A.4 uses the same scale.
FD_EPSILON_SCALE = 0.01

# --- Batch normalisation (PyTorch conventions) ----------------------------
BN_MOMENTUM = 0.9  # torch momentum 0.1 == Keras momentum 0.9
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d default

# --- Search ---------------------------------------------------------------
SEARCH_EPOCHS = 50  # [darts] train_search.py --epochs
SEARCH_BATCH_SIZE = 64  # [darts] train_search.py --batch_size
PAPER_SEARCH_BATCH_SIZE = 96  # [amended] section 3.1.1
TRAIN_PORTION = 0.5  # [darts] train_search.py --train_portion
INIT_CHANNELS = 16  # [darts] train_search.py --init_channels
LAYERS = 8  # [darts] train_search.py --layers
STEPS = 4  # [darts] model_search.py Network(steps=4)
MULTIPLIER = 4  # [darts] model_search.py Network(multiplier=4)
STEM_MULTIPLIER = 3  # [darts] model_search.py Network(stem_multiplier=3)
ARCH_INIT_SCALE = 1e-3  # [darts] model_search.py `1e-3*torch.randn(...)`
