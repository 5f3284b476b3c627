"""Looking inside a trained CNN: activations, saliency maps, filter ranking, confusion matrices.

Library code only: every function takes plain `torch.nn.Module`s and tensors, so it can be
tested with small models built in the tests and driven by any command.
"""
