# Issue 7: the embedded default model checkpoints/mamba2-tiny-wikitext (trains on CPU in ~12-20 min).
# Extra Hydra overrides: make train-tiny TRAIN_ARGS="train.steps=50 write_checkpoint=false"
.PHONY: train-tiny
train-tiny: $(STAMP)
	$(PY) experiments/train_tiny.py $(TRAIN_ARGS)
