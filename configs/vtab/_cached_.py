# VTAB-1k (./_base_.py's recipe and task) in the frozen streaming mode with the feature cache: epoch 1 runs the
# frozen ViT-B/16 on the 1000 training images and stores their per-block features; epochs 2-100 read them and run
# only the side network. The first evaluation does the same for the test split.
#
#   python -m hst_fast.train configs/vtab/_cached_.py
#   python -m hst_fast.train configs/vtab/caltech101.py --cfg-options model.backbone_grad=none \
#       model.feature_cache.dtype=float16                     # any task: the same switch on the command line
#
# Disk (float16): 3.63 MB per image, i.e. 3.63 GB for the 1000 training images plus 3.63 MB per test image
# (feature_cache.eval=False caches training only); the log states this run's figures at the start.
# Differences from ./_base_.py: backbone_grad='none' (no meta tokens or LN-tuning: the paper's ablation without them
# lost 1.9 VTAB-1k points; the cache needs a ViT that does not train) and the cache.
_base_ = './_base_.py'

model = dict(
    backbone_grad='none',
    # dir=None: <work_dir>/feature_cache; point dir at one folder to share it between runs of the same pretrained
    # ViT and input size (entries are keyed by backbone, normalization, input size and dtype).
    feature_cache=dict(dir=None, dtype='float16', eval=True))
