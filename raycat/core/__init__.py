"""raycat's core: the classifier, its data on a device, and the staged recipe, in plain PyTorch.

Nothing in this package imports Ray or raycat's storage layer (tests/test_layers.py checks it):
it works on tensors and bytes handed to it, so every piece runs in a unit test on CPU. The Ray
shell around it (train_worker, predict_job, ...) decides where the work runs and where the bytes
come from.
"""
