"""What HST and the baselines share: building the timm ViT and loading local weights, ViT attention
backends, input checks, the trainable-subset mixin and head builder."""
