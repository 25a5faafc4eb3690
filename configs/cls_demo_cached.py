# The classification demo (./cls_demo.py) with the frozen-ViT feature cache: the first epoch runs the ViT and
# stores each image's per-block features (work_dirs/cls_demo_cached/feature_cache/), later epochs and evaluations
# read them and run only the side network.
#
#   python -m hst_fast.train configs/cls_demo_cached.py
#
# Differences from ./cls_demo.py: the frozen streaming mode (backbone_grad='none': no meta tokens, no LN-tuning;
# the cache needs a ViT that does not train) and the cache itself. The pipeline is VTABDataset's resize-only one,
# as the cache requires; the driver refuses random transforms and datasets without stable sample ids.
# At the demo's size (a 4-block ViT-Ti at 32 px) the ViT costs about as much as reading its features back, so
# epochs take the same time (measured: 16 s filling, 18 s and 16 s cached, 91.3% top-1); the cache pays at
# ViT-B/16 and 224 px (python -m bench.cache_epochs: 6.5x per epoch on CPU).
_base_ = './cls_demo.py'

model = dict(
    backbone_grad='none',
    # dir=None: <work_dir>/feature_cache; another dir can be shared by runs of the same ViT and input size.
    # dtype: storage dtype ('float16' | 'bfloat16'); eval: the test split's features are cached too.
    feature_cache=dict(dir=None, dtype='float16', eval=True))
